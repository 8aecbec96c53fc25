"""Oracle: the exported diffusers and kohya files, loaded into plain diffusers pipelines by diffusers' own
loaders, give the image our predictor makes from the trained tar, bit for bit (same fp32 ops on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from devkit.oracle import DEFAULTS, ORACLE_SCHEDULERS
from interop.lora_files import PLAIN, kohya_civitai
from safetensors.torch import load_file

SCALE = 0.6


def oracle_image(oracle, prompt: str, scale: float = SCALE) -> np.ndarray:
    """As devkit.oracle.Oracle does txt2img, with the LoRA scale the predictor passes."""
    pipe = oracle.base
    pipe.scheduler = ORACLE_SCHEDULERS[DEFAULTS["scheduler"]](oracle.config)
    image = pipe(prompt=[prompt], negative_prompt=[DEFAULTS["negative_prompt"]], guidance_scale=DEFAULTS["guidance_scale"],
                 num_inference_steps=DEFAULTS["num_inference_steps"], width=DEFAULTS["width"], height=DEFAULTS["height"],
                 generator=torch.Generator("cpu").manual_seed(DEFAULTS["seed"]),
                 cross_attention_kwargs={"scale": scale}).images[0]
    return np.array(image)


@pytest.fixture
def clean_oracle(oracle):
    yield oracle
    pipe = oracle.base
    pipe.unload_lora_weights()
    for encoder, tokenizer in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)):
        present = [t for t in ("<s0>", "<s1>") if t in tokenizer.get_vocab()]
        if present:
            pipe.unload_textual_inversion(tokens=present, tokenizer=tokenizer, text_encoder=encoder)


def load_embeddings(pipe, path, tokens):
    state = load_file(path)
    pipe.load_textual_inversion(state["clip_l"], token=tokens, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=tokens, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)


def test_universal_file_in_plain_diffusers_equals_the_predictor(run, trained, clean_oracle, tmp_path):
    """diffusers' own kohya conversion of the fp16 universal file + the SDXL embedding give the predictor's
    image of the same two files bit for bit; and the tar's image (its fp32 reference LoRA) up to the fp16
    rounding of the LoRA weights."""
    from interop.lora_files import tar_of

    two_files = tar_of(tmp_path / "universal.tar", {"tok.safetensors": trained.files / "tok.safetensors",
                                                    "tok_emb.safetensors": trained.files / "tok_emb.safetensors"},
                       {"TOK": "<s0><s1>"})
    ours = run(replicate_weights=str(two_files), prompt="a photo of TOK", lora_scale=SCALE)[0]
    pipe = clean_oracle.base
    pipe.load_lora_weights(str(trained.files / "tok.safetensors"))  # diffusers' kohya conversion
    load_embeddings(pipe, trained.files / "tok_emb.safetensors", trained.tokens)
    theirs = oracle_image(clean_oracle, "a photo of " + "".join(trained.tokens))
    np.testing.assert_array_equal(ours, theirs)
    from_tar = run(replicate_weights=str(trained.tar), prompt="a photo of TOK", lora_scale=SCALE)[0]
    assert np.abs(from_tar.astype(int) - theirs.astype(int)).max() <= 2  # fp16 LoRA vs fp32: rounding only
    # and the LoRA really is in play: without it (embeddings only) the image differs
    pipe.unload_lora_weights()
    assert not np.array_equal(oracle_image(clean_oracle, "a photo of " + "".join(trained.tokens)), ours)


def test_foreign_kohya_with_alpha_and_text_encoders_equals_diffusers(run, clean_oracle, tmp_path):
    """A CivitAI-style file (fp16, alpha 2 of rank 4, te1/te2 parts): the same image as diffusers loading it."""
    path = kohya_civitai(tmp_path / "civitai_style", clean_oracle.base, alpha=2.0, scale=0.5)
    ours = run(replicate_weights=str(path), lora_scale=1.0, **PLAIN)[0]
    clean_oracle.base.load_lora_weights(load_file(path))
    theirs = oracle_image(clean_oracle, PLAIN["prompt"], scale=1.0)
    np.testing.assert_array_equal(ours, theirs)
