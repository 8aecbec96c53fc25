"""The trainer's tar: the reference files exactly as before, plus one universal (kohya, fp16) LoRA, the SDXL
embedding and a README."""

from __future__ import annotations

import re

import torch
from safetensors import safe_open
from safetensors.torch import load_file

REFERENCE = ("lora.safetensors", "embeddings.pti", "special_params.json")
KOHYA_KEY = re.compile(r"^lora_unet_(down|mid|up)_blocks?_[\w]+_attn[12]_to_(q|k|v|out_0)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def test_reference_files_are_byte_identical_to_the_pre_interop_writer(trained):
    for name in REFERENCE:
        assert (trained.files / name).read_bytes() == (trained.reference / name).read_bytes(), name
    # and nothing but the reference files went into the checkpoints' format: no alpha, same keys
    lora = load_file(trained.files / "lora.safetensors")
    assert not any("alpha" in k for k in lora)


def test_the_tar_holds_the_reference_files_and_one_universal_lora(trained):
    names = {p.name for p in trained.files.iterdir()}
    assert names == {*REFERENCE, "tok.safetensors", "tok_emb.safetensors", "README.txt"}


def test_kohya_file_keys_and_alpha_equal_to_rank(trained):
    kohya = load_file(trained.files / "tok.safetensors")
    legacy = load_file(trained.files / "lora.safetensors")
    bad = [k for k in kohya if not KOHYA_KEY.match(k)]
    assert not bad, bad[:3]
    alphas = [v for k, v in kohya.items() if k.endswith(".alpha")]
    assert len(alphas) * 2 == len(legacy) and all(float(a) == trained.rank for a in alphas)  # scale 1 = trained
    assert {v.dtype for v in kohya.values()} == {torch.float16}
    k = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    torch.testing.assert_close(kohya[f"lora_unet_{k.replace('.', '_')}_to_out_0.lora_up.weight"],
                               legacy[f"{k}.processor.to_out_lora.up.weight"].half(), rtol=0, atol=0)
    with safe_open(trained.files / "tok.safetensors", "pt") as f:
        assert f.metadata()["ss_base_model_version"].startswith("sdxl")


def test_sdxl_embedding_file_is_the_reference_rows(trained):
    emb = load_file(trained.files / "tok_emb.safetensors")
    pti = load_file(trained.files / "embeddings.pti")
    assert set(emb) == {"clip_l", "clip_g"}
    assert list(emb["clip_l"].shape) == [2, 32] and list(emb["clip_g"].shape) == [2, 64]  # tiny [N,768]/[N,1280]
    torch.testing.assert_close(emb["clip_l"], pti["text_encoders_0"], rtol=0, atol=0)
    torch.testing.assert_close(emb["clip_g"], pti["text_encoders_1"], rtol=0, atol=0)


def test_readme_says_which_file_for_which_tool(trained):
    text = (trained.files / "README.txt").read_text()
    for needle in ("load_lora_weights", "tok.safetensors", "ComfyUI", "InvokeAI",
                   "Automatic1111", "<lora:tok:", "tok_emb.safetensors", "embedding:tok_emb", "<s0><s1>", "TOK",
                   "load_textual_inversion"):
        assert needle in text, needle
