"""Trained weights in the reference format: loaded per request and at setup, really used, cleanly removed."""

import numpy as np
import pytest
import torch
from devkit.oracle import DEFAULTS
from devkit.reference_tars import reference_lora_tar
from PIL import Image
from safetensors.torch import load_file

PLAIN = dict(prompt="a photo of a dog")  # no trigger word: only the LoRA can change this image
TOK = dict(prompt="a photo of TOK")


def test_lora_tar_changes_the_image_and_the_next_request_is_base_bitwise(run, lora_tar):
    base = run(**PLAIN)[0]
    tuned = run(replicate_weights=str(lora_tar), lora_scale=1.0, **PLAIN)[0]
    assert np.abs(tuned.astype(int) - base.astype(int)).mean() > 1.0
    np.testing.assert_array_equal(run(**PLAIN)[0], base)


def test_lora_scale_zero_gives_the_base_image(run, lora_tar):
    base = run(**PLAIN)[0]
    np.testing.assert_array_equal(run(replicate_weights=str(lora_tar), lora_scale=0.0, **PLAIN)[0], base)
    assert not np.array_equal(run(replicate_weights=str(lora_tar), lora_scale=0.6, **PLAIN)[0], base)


def test_trigger_word_becomes_the_new_tokens_in_both_encoders(predictor, run, lora_tar):
    run(replicate_weights=str(lora_tar), **TOK)
    ft = predictor.finetunes
    assert ft.rewrite_prompt("a photo of TOK") == "a photo of <s0><s1>"
    assert ft.rewrite_prompt("TOKYO stock TOKs") == "TOKYO stock TOKs"  # whole words only
    base = predictor.models.base
    for tokenizer in (base.tokenizer, base.tokenizer_2):
        ids = tokenizer("a photo of <s0><s1>").input_ids
        new = tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"])
        assert ids[-3:-1] == new and all(i >= tokenizer.vocab_size for i in new)
    # the embedding rows of the new tokens are the ones in embeddings.pti
    import tarfile

    with tarfile.open(lora_tar) as tar:
        emb_bytes = tar.extractfile("embeddings.pti").read()
    from safetensors.torch import load

    emb = load(emb_bytes)
    for i, (encoder, tokenizer) in enumerate(((base.text_encoder, base.tokenizer), (base.text_encoder_2, base.tokenizer_2))):
        rows = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"])]
        torch.testing.assert_close(rows.detach(), emb[f"text_encoders_{i}"], rtol=0, atol=0)
    # and the trigger word really changes the image against its literal text
    assert not np.array_equal(run(replicate_weights=str(lora_tar), lora_scale=0.0, **TOK)[0], run(**TOK)[0])


def test_lora_delta_is_up_down_times_scale(run, lora_tar, fresh_unet, tmp_path):
    """Oracle: the legacy LoRA merged by hand (W + scale * up @ down) into a plain diffusers pipeline."""
    from devkit.oracle import Oracle

    scale = 0.5
    ours = run(replicate_weights=str(lora_tar), lora_scale=scale, **PLAIN)[0]
    oracle = Oracle(watermark=True)
    import tarfile

    with tarfile.open(lora_tar) as tar:
        tar.extractall(tmp_path, filter="data")
    legacy = load_file(tmp_path / "lora.safetensors")
    unet = oracle.base.unet
    with torch.no_grad():
        for key, down in legacy.items():
            if not key.endswith("_lora.down.weight"):
                continue
            up = legacy[key.replace(".down.", ".up.")]
            proc, short = key.split(".processor.to_")[0], key.split(".processor.to_")[1].split("_lora")[0]
            attn = unet.get_submodule(proc)
            layer = attn.to_out[0] if short == "out" else getattr(attn, f"to_{short}")
            layer.weight += scale * (up @ down)
    theirs = oracle("txt2img", **PLAIN)[0]
    # merged weights round differently from the unmerged LoRA forward: allow 2/255 per pixel
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2
    assert np.abs(ours.astype(int) - run(**PLAIN)[0].astype(int)).max() > 10


def test_full_unet_finetune_loads_and_unloads_bitwise(run, unet_tar):
    base = run(**PLAIN)[0]
    tuned = run(replicate_weights=str(unet_tar), **PLAIN)[0]
    assert not np.array_equal(tuned, base)
    np.testing.assert_array_equal(run(**PLAIN)[0], base)


def test_switching_between_trained_weights(run, lora_tar, unet_tar):
    a = run(replicate_weights=str(lora_tar), **TOK)[0]
    b = run(replicate_weights=str(unet_tar), **TOK)[0]
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(run(replicate_weights=str(lora_tar), **TOK)[0], a)


def test_cog_weights_at_setup_give_the_same_images_as_replicate_weights(run, lora_tar):
    from predict import Predictor

    via_request = run(replicate_weights=str(lora_tar), **TOK)[0]
    p = Predictor()
    p.setup(weights=str(lora_tar))
    paths = p.predict(**{**DEFAULTS, **TOK})
    np.testing.assert_array_equal(np.array(Image.open(paths[0])), via_request)


def test_new_tokens_work_in_refiner_modes(predictor, run, lora_tar):
    for refine in ("expert_ensemble_refiner", "base_image_refiner"):
        tuned = run(replicate_weights=str(lora_tar), refine=refine, lora_scale=0.0, **TOK)[0]
        literal = run(refine=refine, **TOK)[0]
        assert not np.array_equal(tuned, literal), refine
    assert predictor.models.refiner.tokenizer_2 is predictor.models.base.tokenizer_2


def _not_a_tar(d):
    (d / "x.tar").write_bytes(b"not a tar at all")
    return d / "x.tar"


def _empty_tar(d):
    import tarfile

    with tarfile.open(d / "empty.tar", "w"):
        pass
    return d / "empty.tar"


@pytest.mark.parametrize(
    "make, message",
    [
        (_not_a_tar, "expected a tar of trained weights"),
        (_empty_tar, "expected lora.safetensors or unet.safetensors"),
        (lambda d: d / "missing.tar", "nor a file or folder inside the folder this server allows"),
    ],
)
def test_bad_weights_fail_clearly_and_leave_the_base_model(run, tmp_path, make, message):
    base = run(**PLAIN)[0]
    path = make(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match="replicate_weights") as err:
        run(replicate_weights=str(path), **PLAIN)
    assert message in str(err.value)
    np.testing.assert_array_equal(run(**PLAIN)[0], base)


def test_lora_for_another_architecture_is_refused(run, tmp_path):
    """An SD1.5-shaped LoRA (cross-attention dim 768) does not fit the SDXL UNet."""
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=48, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4,
    )
    tar = reference_lora_tar(tmp_path / "sd15.tar", other)
    base = run(**PLAIN)[0]
    with pytest.raises(ValueError, match="replicate_weights: lora.safetensors"):
        run(replicate_weights=str(tar), **PLAIN)
    np.testing.assert_array_equal(run(**PLAIN)[0], base)


def test_failed_apply_rolls_back_to_base(predictor, run, lora_tar, monkeypatch):
    """A failure half-way through applying (here: in the embeddings step) leaves the base model."""
    base = run(**PLAIN)[0]

    def boom(*a, **k):
        raise RuntimeError("simulated failure while loading embeddings")

    monkeypatch.setattr(predictor.models.base, "load_textual_inversion", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        run(replicate_weights=str(lora_tar), **PLAIN)
    monkeypatch.undo()
    assert predictor.finetunes.active is None
    np.testing.assert_array_equal(run(**PLAIN)[0], base)
