"""replicate_weights takes any SDXL LoRA, told by content; everything else is refused saying what it is,
and the next request is the base model bitwise."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from interop import lora_files as lf
from interop.lora_files import PLAIN
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def plain_pipe():
    import weights
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(weights.resolve("sdxl-base"), variant="fp16", dtype=torch.float32)


def _our_formats_tar(trained, d):
    f = trained.files
    return lf.tar_of(d / "ours.tar", {"tok.safetensors": f / "tok.safetensors",
                                      "tok_emb.safetensors": f / "tok_emb.safetensors"}, {"TOK": "<s0><s1>"})


def _diffusers_file(trained, d):
    """The trained LoRA as diffusers' training scripts save it (diffusers' converter from peft keys)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    peft = {}
    for key, value in load_file(trained.files / "lora.safetensors").items():
        module, rest = key.split(".processor.")  # ...attn1.processor.to_q_lora.down.weight
        proj, ab = rest.split("_lora.")[0], rest.split("_lora.")[1].split(".")[0]
        proj = "to_out.0" if proj == "to_out" else proj
        peft[f"{module}.{proj}.lora_{'A' if ab == 'down' else 'B'}.weight"] = value  # ...attn1.to_q.lora_A.weight
    StableDiffusionXLPipeline.save_lora_weights(d, unet_lora_layers=convert_state_dict_to_diffusers(peft),
                                                weight_name="pytorch_lora_weights.safetensors")
    return d / "pytorch_lora_weights.safetensors"


def _kohya_only_tar(trained, d):
    return lf.tar_of(d / "kohya.tar", {"tok.safetensors": trained.files / "tok.safetensors"})


def _single(name):
    def make(trained, d):
        return shutil.copyfile(trained.files / name, d / "weights")  # no extension: content decides
    return make


def _peft_file(trained, d):
    diff = load_file(_diffusers_file(trained, d))
    peft = {k[len("unet."):].replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v
            for k, v in diff.items()}
    save_file(peft, d / "peft.safetensors")
    return d / "peft.safetensors"


ACCEPTED = {
    "our tar": lambda trained, d: trained.tar,
    "tar of our universal file + embeddings": _our_formats_tar,
    "tar of our kohya file": _kohya_only_tar,
    "diffusers .safetensors": lambda trained, d: shutil.copyfile(_diffusers_file(trained, d), d / "weights"),
    "kohya .safetensors": _single("tok.safetensors"),
    "reference lora.safetensors alone": _single("lora.safetensors"),
    "peft .safetensors": _peft_file,
}


@pytest.mark.parametrize("kind", list(ACCEPTED))
def test_accepted_kind_changes_the_image_and_unloads_bitwise(run, base_image, trained, tmp_path, kind):
    source = ACCEPTED[kind](trained, tmp_path)
    tuned = run(replicate_weights=str(source), lora_scale=1.0, **PLAIN)[0]
    assert np.abs(tuned.astype(int) - base_image.astype(int)).mean() > 1.0, kind
    np.testing.assert_array_equal(run(**PLAIN)[0], base_image)


def test_our_formats_without_the_reference_files_give_the_tar_image(run, trained, tmp_path):
    """The universal file + SDXL embedding + special_params.json: TOK works and the image is the tar's, up to
    the fp16 rounding of the universal file's LoRA weights."""
    with_tar = run(replicate_weights=str(trained.tar), prompt="a photo of TOK")[0]
    universal = run(replicate_weights=str(_our_formats_tar(trained, tmp_path)), prompt="a photo of TOK")[0]
    assert np.abs(universal.astype(int) - with_tar.astype(int)).max() <= 2
    base = run(prompt="a photo of TOK")[0]
    assert np.abs(universal.astype(int) - base.astype(int)).mean() > 1.0


def test_civitai_kohya_with_text_encoders_loads_and_unloads_bitwise(predictor, run, base_image, plain_pipe, tmp_path):
    path = lf.kohya_civitai(tmp_path / "civitai.safetensors", plain_pipe)
    np.testing.assert_array_equal(run(**PLAIN)[0], base_image)  # nothing applied: the snapshot is the base
    base = predictor.models.base
    before = {n: {k: v.clone() for k, v in m.state_dict().items()}
              for n, m in (("te1", base.text_encoder), ("te2", base.text_encoder_2), ("unet", base.unet))}
    tuned = run(replicate_weights=str(path), lora_scale=1.0, **PLAIN)[0]
    assert np.abs(tuned.astype(int) - base_image.astype(int)).mean() > 1.0
    assert any(n.endswith("lora_A") or ".lora_A." in n for n, _ in base.text_encoder_2.named_modules())  # te2 too
    np.testing.assert_array_equal(run(**PLAIN)[0], base_image)
    for n, m in (("te1", base.text_encoder), ("te2", base.text_encoder_2), ("unet", base.unet)):
        after = m.state_dict()
        assert after.keys() == before[n].keys(), n
        assert all(torch.equal(after[k], v) for k, v in before[n].items()), n


def test_kohya_alpha_scales_as_alpha_over_rank(run, plain_pipe, tmp_path):
    """alpha 2 of rank 4 with up U == alpha 4 (scale 1) with up U/2, up to float rounding of the product."""
    half = lf.kohya_civitai(tmp_path / "a2", plain_pipe, alpha=2.0, text_encoders=False, dtype=torch.float32)
    full = lf.kohya_civitai(tmp_path / "a4", plain_pipe, alpha=4.0, scale=0.5, text_encoders=False,
                            dtype=torch.float32)
    a = run(replicate_weights=str(half), lora_scale=1.0, **PLAIN)[0].astype(int)
    b = run(replicate_weights=str(full), lora_scale=1.0, **PLAIN)[0].astype(int)
    assert np.abs(a - b).max() <= 1
    c = run(replicate_weights=str(lf.kohya_civitai(tmp_path / "a4u", plain_pipe, alpha=4.0, text_encoders=False,
                                                     dtype=torch.float32)), lora_scale=1.0, **PLAIN)[0].astype(int)
    assert np.abs(a - c).max() > 2  # alpha is not ignored


def test_hugging_face_repo_id_from_the_local_cache(run, base_image, trained, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    hub = lf.hf_cache(tmp_path / "hub", "someone/sdxl-tok-lora",
                      {"pytorch_lora_weights.safetensors": _diffusers_file(trained, tmp_path),
                       "tok_emb.safetensors": trained.files / "tok_emb.safetensors"})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    tuned = run(replicate_weights="someone/sdxl-tok-lora", lora_scale=1.0, **PLAIN)[0]
    np.testing.assert_array_equal(tuned, run(replicate_weights=str(trained.tar), lora_scale=1.0, **PLAIN)[0])
    # without special_params.json the embedding file's name is the trigger word, as in A1111/ComfyUI
    a = run(replicate_weights="someone/sdxl-tok-lora", prompt="a photo of tok_emb")[0]
    np.testing.assert_array_equal(a, run(replicate_weights=str(trained.tar), prompt="a photo of TOK")[0])
    with pytest.raises(ValueError, match="replicate_weights: Hugging Face repo someone/missing is not in the local cache"):
        run(replicate_weights="someone/missing", **PLAIN)
    np.testing.assert_array_equal(run(**PLAIN)[0], base_image)


def _sdxl_embedding_only(trained, d):
    return shutil.copyfile(trained.files / "tok_emb.safetensors", d / "weights")


REFUSED = {
    "SD1.5 kohya LoRA": (lambda t, d: lf.kohya_sd15(d / "sd15.safetensors"),
                         "found a kohya LoRA for SD1.x (keys lora_unet_down_blocks_0_"),
    "full-size SDXL LoRA on other weights": (lambda t, d: lf.diffusers_full_size_sdxl(d / "x.safetensors"),
                                             "cross-attention 2048); it does not fit this SDXL model"),
    "Flux LoRA": (lambda t, d: lf.flux_lora(d / "flux.safetensors"), "found a LoRA for a transformer model"),
    "random safetensors": (lambda t, d: lf.random_safetensors(d / "r.safetensors"),
                           "found a safetensors file with 3 tensors that is not a LoRA"),
    "pickle": (lambda t, d: lf.pickle_file(d / "lora.safetensors"), "found a pickle"),
    "SDXL embedding alone": (_sdxl_embedding_only, "found an SDXL textual-inversion embedding (clip_l, clip_g"),
    "html page": (lambda t, d: (d / "page.safetensors").write_text("<html>404</html>") and d / "page.safetensors",
                  "found a text file"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_refused_kind_says_what_it_found_and_leaves_the_base(run, base_image, trained, tmp_path, kind):
    make, message = REFUSED[kind]
    source = make(trained, tmp_path)
    with pytest.raises(ValueError, match="replicate_weights") as err:
        run(replicate_weights=str(source), **PLAIN)
    assert message in str(err.value), str(err.value)
    np.testing.assert_array_equal(run(**PLAIN)[0], base_image)


def test_refused_after_a_lora_leaves_the_base(run, base_image, trained, tmp_path):
    run(replicate_weights=str(trained.tar), **PLAIN)
    with pytest.raises(ValueError, match="found a pickle"):
        run(replicate_weights=str(lf.pickle_file(tmp_path / "p.bin")), **PLAIN)
    np.testing.assert_array_equal(run(**PLAIN)[0], base_image)
