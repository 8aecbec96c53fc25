"""SDXL_BACKEND=openvino: the predictor's images match plain diffusers (torch) for every mode and scheduler.

The OpenVINO predictor runs fp32 IR computing in f32 (SDXL_OPENVINO_WEIGHTS=fp32, SDXL_OPENVINO_INFERENCE=f32) converted from the same tiny weight files.
Tolerance: 1 pixel level (of 255). OpenVINO's CPU kernels sum in another order than torch's (fused
convolutions, its own attention and GroupNorm), so the fp32 results differ by ~1e-6 relative; after the
scheduler steps and the VAE a pixel can land on the other side of a rounding boundary. Measured here: 0 or 1.
The IR is converted once into the tiny weights' directory and reused by later runs.
"""

import numpy as np
import pytest
import torch
from devkit.oracle import ORACLE_SCHEDULERS, assert_images_close
from safetensors.torch import load

TOLERANCE = 1
PLAIN = dict(prompt="a photo of a dog")
TOK = dict(prompt="a photo of TOK")


def _close(ours, theirs, tolerance=TOLERANCE):
    assert_images_close(ours, theirs, tolerance)


@pytest.fixture(scope="session")
def ov_predictor():
    from predict import Predictor

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDXL_BACKEND", "openvino")
        mp.setenv("SDXL_OPENVINO_WEIGHTS", "fp32")
        mp.setenv("SDXL_OPENVINO_INFERENCE", "f32")
        p = Predictor()
        p.setup()
    return p


@pytest.fixture(scope="module")
def torch_predictor():
    """A torch predictor of its own for the fine-tune comparisons: the shared one (devkit.fixtures) stays
    untouched by them (a LoRA load + unload there moves later DDIM images by 1 level: see the report)."""
    from predict import Predictor

    p = Predictor()
    p.setup()
    return p


@pytest.fixture(scope="module")
def run(torch_predictor):
    from devkit.oracle import DEFAULTS
    from PIL import Image

    def _run(**overrides):
        return [np.array(Image.open(p)) for p in torch_predictor.predict(**{**DEFAULTS, **overrides})]

    return _run


@pytest.fixture(scope="session")
def ov_run(ov_predictor):
    from devkit.oracle import DEFAULTS
    from PIL import Image

    def _run(**overrides):
        return [np.array(Image.open(p)) for p in ov_predictor.predict(**{**DEFAULTS, **overrides})]

    return _run


def test_the_pipelines_run_openvino_modules(ov_predictor):
    from sdxl.openvino_backend import OVTextEncoder, OVUNet, OVVae

    m = ov_predictor.models
    for pipe in (m.base, m.img2img, m.inpaint):
        assert isinstance(pipe.unet, OVUNet) and isinstance(pipe.vae, OVVae)
        assert isinstance(pipe.text_encoder, OVTextEncoder) and isinstance(pipe.text_encoder_2, OVTextEncoder)
    assert isinstance(m.refiner.unet, OVUNet) and m.refiner.unet is not m.base.unet
    assert m.refiner.text_encoder_2 is m.base.text_encoder_2


@pytest.mark.parametrize("scheduler", list(ORACLE_SCHEDULERS))
def test_every_scheduler_matches_diffusers(ov_run, oracle, scheduler):
    kw = dict(scheduler=scheduler, num_outputs=2)
    _close(ov_run(**kw), oracle("txt2img", **kw))


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
@pytest.mark.parametrize("scheduler", ["K_EULER", "DPMSolverMultistep"])
def test_img2img_and_inpaint_match_diffusers(ov_run, oracle, inputs, mode, scheduler):
    kw = dict(scheduler=scheduler, image=inputs["image"], **({"mask": inputs["mask"]} if mode == "inpaint" else {}))
    _close(ov_run(**kw), oracle(mode, **kw))


@pytest.mark.parametrize("refine", ["expert_ensemble_refiner", "base_image_refiner"])
@pytest.mark.parametrize("scheduler", ["K_EULER", "HeunDiscrete"])
def test_refiner_modes_match_diffusers(ov_run, oracle, refine, scheduler):
    kw = dict(scheduler=scheduler, refine=refine, num_inference_steps=5)
    _close(ov_run(**kw), oracle("txt2img", **kw))


def test_refiner_after_inpaint_matches_diffusers(ov_run, oracle, inputs):
    kw = dict(refine="expert_ensemble_refiner", image=inputs["image"], mask=inputs["mask"])
    _close(ov_run(**kw), oracle("inpaint", **kw))


def test_sizes_that_are_no_multiple_of_the_unet_factor_match_diffusers(ov_run, oracle):
    """72x40 px -> 9x5 latents: the upsamplers take the skip connections' sizes (one graph for all sizes)."""
    kw = dict(width=72, height=40)
    _close(ov_run(**kw), oracle("txt2img", **kw))


def test_lora_tar_matches_the_torch_predictor_and_back_to_base_is_exact(ov_run, run, lora_tar):
    """A LoRA request runs the torch UNet (peft, as on the torch backend) with the OV text encoders and VAE."""
    base = ov_run(**PLAIN)[0]
    tuned = ov_run(replicate_weights=str(lora_tar), lora_scale=0.8, **PLAIN)
    assert np.abs(tuned[0].astype(int) - base.astype(int)).mean() > 1.0
    _close(tuned, run(replicate_weights=str(lora_tar), lora_scale=0.8, **PLAIN))
    np.testing.assert_array_equal(ov_run(**PLAIN)[0], base)
    run(**PLAIN)  # the torch predictor back to base as well


def test_textual_inversion_tokens_load_into_the_openvino_text_encoders(ov_predictor, ov_run, run, lora_tar):
    import tarfile

    ov_run(replicate_weights=str(lora_tar), **TOK)
    base = ov_predictor.models.base
    with tarfile.open(lora_tar) as tar:
        emb = load(tar.extractfile("embeddings.pti").read())
    for i, (encoder, tokenizer) in enumerate(((base.text_encoder, base.tokenizer),
                                              (base.text_encoder_2, base.tokenizer_2))):
        rows = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"])]
        torch.testing.assert_close(rows.detach(), emb[f"text_encoders_{i}"], rtol=0, atol=0)
    # with the LoRA at scale 0 only the new tokens act: the OV text encoders against torch's
    kw = dict(replicate_weights=str(lora_tar), lora_scale=0.0, **TOK)
    tuned = ov_run(**kw)
    _close(tuned, run(**kw))
    assert not np.array_equal(tuned[0], ov_run(**TOK)[0])
    run(**TOK)
    # unloaded: the embedding is the base one again
    assert base.text_encoder.get_input_embeddings().weight.shape[0] == len(base.tokenizer)


def test_full_unet_fine_tune_matches_the_torch_predictor(ov_run, run, unet_tar):
    kw = dict(replicate_weights=str(unet_tar), **PLAIN)
    _close(ov_run(**kw), run(**kw))
    ov_run(**PLAIN), run(**PLAIN)


def test_converted_ir_is_reused_not_converted_again(ov_predictor):
    import weights
    from sdxl.openvino_backend import converted

    def must_not_run():
        raise AssertionError("converted again")

    xml = converted(weights.resolve("sdxl-base"), "unet", "unet", "fp32", must_not_run)
    assert xml.is_file() and xml.parent.parent == weights.resolve("sdxl-base") / "openvino"
    assert not [p for p in xml.parent.parent.iterdir() if p.name.startswith(".")]  # no half-written leftovers


def test_compiled_models_are_cached_for_the_next_cold_start(ov_predictor):
    """Setup compiled every IR once and OpenVINO kept the compiled model: compiling again imports it."""
    import weights
    from sdxl.openvino_backend import COMPILED, compile_ir, converted

    def must_not_run():
        raise AssertionError("converted again")

    xml = converted(weights.resolve("sdxl-base"), "unet", "unet", "fp32", must_not_run)
    assert list((xml.parent.parent / COMPILED / "f32").glob("*.blob"))
    assert compile_ir(xml).get_property("LOADED_FROM_CACHE") is True


def test_a_half_written_compiled_model_is_compiled_again(ov_predictor, tmp_path):
    """OpenVINO writes its compiled-model blobs in place: a start killed while writing one leaves it truncated.
    The next start must compile again (and rewrite it), not fail on it."""
    import shutil

    import weights
    from sdxl.openvino_backend import COMPILED, compile_ir, converted

    def must_not_run():
        raise AssertionError("converted again")

    ir = converted(weights.resolve("sdxl-base"), "vae", "decoder", "fp32", must_not_run).parent
    xml = shutil.copytree(ir, tmp_path / ir.name) / "model.xml"
    compile_ir(xml)
    (blob,) = (tmp_path / COMPILED / "f32").glob("*.blob")
    blob.chmod(0o600)  # OpenVINO writes them read-only
    with open(blob, "r+b") as f:
        f.truncate(blob.stat().st_size // 3)
    again = compile_ir(xml)
    assert again.get_property("LOADED_FROM_CACHE") is False
    assert again([np.zeros((1, 4, 8, 8), np.float32)])[0].shape == (1, 3, 64, 64)
    assert compile_ir(xml).get_property("LOADED_FROM_CACHE") is True


def test_a_compiled_model_is_not_reused_for_another_inference_precision(ov_predictor, monkeypatch):
    """OpenVINO's cache key leaves INFERENCE_PRECISION_HINT out: with one cache folder, a bf16 compile imported the
    f32 blob of the same int8 IR and its first inference crashed the process. Each precision has its own folder."""
    import weights
    from sdxl.openvino_backend import compile_ir, converted, converted_unet

    base = weights.resolve("sdxl-base")
    compile_ir(converted(base, "unet", "unet", "int8", None), "f32")  # the f32 blob is in the cache
    monkeypatch.setenv("SDXL_OPENVINO_INFERENCE", "bf16")
    unet = converted_unet(base, "int8", time_ids=6)
    cfg = unet.config
    g = torch.Generator().manual_seed(0)
    text = unet.add_embedding.linear_1.in_features - cfg.addition_time_embed_dim * 6
    out = unet(torch.randn(2, cfg.in_channels, 32, 32, generator=g), torch.tensor(500.0),
               torch.randn(2, 77, cfg.cross_attention_dim, generator=g),
               added_cond_kwargs={"text_embeds": torch.randn(2, text, generator=g), "time_ids": torch.ones(2, 6)}).sample
    assert out.shape == (2, cfg.in_channels, 32, 32) and torch.isfinite(out).all()


def test_int8_unet_is_close_to_fp32(ov_predictor):
    """The default UNet precision (nncf int8 weights), compressed from the cached fp32 IR (no second trace)."""
    import weights
    from sdxl.openvino_backend import compile_ir, converted

    def must_not_run():
        raise AssertionError("traced again")

    directory = weights.resolve("sdxl-base")
    xml = {p: converted(directory, "unet", "unet", p, must_not_run) for p in ("fp32", "int8")}
    # the fp32 IR keeps the files' fp16 weights (cast to f32 in the graph); int8 is about half of that
    assert xml["int8"].with_suffix(".bin").stat().st_size < 0.75 * xml["fp32"].with_suffix(".bin").stat().st_size
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 96, generator=g),
         torch.randn(2, 64, generator=g), torch.randn(2, 6, generator=g)]
    a, b = (torch.from_numpy(compile_ir(xml[p])([t.numpy() for t in x])[0]) for p in ("fp32", "int8"))
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    assert not torch.equal(a, b)


def test_default_predictor_runs_int8_unets_and_text_encoders_close_to_fp32(ov_run, monkeypatch):
    """The defaults (SDXL_OPENVINO_WEIGHTS, SDXL_OPENVINO_INFERENCE unset): nncf int8 UNets and text encoders,
    compressed from the cached fp32 IR, the UNets computing in OpenVINO's own precision for this CPU; its images
    stay close to the fp32 predictor's (the full-size UNet's cosine is in the bench)."""
    from predict import Predictor

    monkeypatch.setenv("SDXL_BACKEND", "openvino")
    for name in ("SDXL_OPENVINO_WEIGHTS", "SDXL_OPENVINO_UNET", "SDXL_OPENVINO_INFERENCE"):
        monkeypatch.delenv(name, raising=False)
    p = Predictor()
    p.setup()
    m = p.models
    for module in (m.base.unet, m.refiner.unet, m.base.text_encoder, m.base.text_encoder_2):
        assert module.ir.parent.name.split("-")[-2] == "int8"
    assert m.refiner.text_encoder_2 is m.base.text_encoder_2
    from devkit.oracle import DEFAULTS
    from PIL import Image

    int8 = [np.array(Image.open(f)).astype(int) for f in p.predict(**{**DEFAULTS, **PLAIN})]
    fp32 = [a.astype(int) for a in ov_run(**PLAIN)]
    # measured: 0.59 levels (max 5) with bf16 compute (this AMX CPU's default), 0.32 (max 3) with f32
    assert np.abs(int8[0] - fp32[0]).mean() < 2
    assert not np.array_equal(int8[0], fp32[0])


def test_unknown_backend_is_refused_with_the_accepted_values(monkeypatch):
    from sdxl.openvino_backend import backend, inference_precision, weight_precision

    monkeypatch.setenv("SDXL_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="SDXL_BACKEND='tensorrt'.*torch, openvino"):
        backend()
    monkeypatch.setenv("SDXL_OPENVINO_WEIGHTS", "int4")
    with pytest.raises(ValueError, match="SDXL_OPENVINO_WEIGHTS='int4'.*int8, fp32"):
        weight_precision()
    monkeypatch.delenv("SDXL_OPENVINO_WEIGHTS")
    monkeypatch.setenv("SDXL_OPENVINO_UNET", "fp32")  # the former name still works
    assert weight_precision() == "fp32"
    monkeypatch.setenv("SDXL_OPENVINO_INFERENCE", "f16")
    with pytest.raises(ValueError, match="SDXL_OPENVINO_INFERENCE='f16'.*auto, f32, bf16"):
        inference_precision()


def test_kohya_lora_with_text_encoder_layers_matches_the_torch_predictor(torch_predictor, ov_predictor, ov_run, run,
                                                                         tmp_path):
    """A foreign LoRA that also changes the text encoders: the torch text encoders are swapped in for it."""
    from interop.lora_files import kohya_civitai

    from sdxl.openvino_backend import OVTextEncoder

    lora = kohya_civitai(tmp_path / "style.safetensors", torch_predictor.models.base)
    base = ov_run(**PLAIN)[0]
    kw = dict(replicate_weights=str(lora), lora_scale=0.7, **PLAIN)
    tuned = ov_run(**kw)
    assert not isinstance(ov_predictor.models.base.text_encoder, OVTextEncoder)
    assert np.abs(tuned[0].astype(int) - base.astype(int)).mean() > 1.0
    _close(tuned, run(**kw))
    np.testing.assert_array_equal(ov_run(**PLAIN)[0], base)
    assert isinstance(ov_predictor.models.base.text_encoder, OVTextEncoder)
    run(**PLAIN)
