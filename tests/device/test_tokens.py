"""Pivotal tuning's new token rows on CUDA: drawn on the encoders' device, with its generator."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from device.standin import cpu_numbers, on_cuda
from training.tokens import PivotalTokens


def _encoders(base_dir):
    load = dict(variant="fp16", torch_dtype=torch.float32)
    tokenizers = [CLIPTokenizer.from_pretrained(base_dir, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    encoders = [CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder", **load),
                CLIPTextModelWithProjection.from_pretrained(base_dir, subfolder="text_encoder_2", **load)]
    return tokenizers, encoders


def test_pivotal_tokens_on_cuda_draw_new_rows_on_the_encoders_device(base_dir, cuda):
    tokenizers, encoders = _encoders(base_dir)
    encoders = [e.to(cuda) for e in encoders]
    tokens = PivotalTokens(tokenizers, encoders, "TOK", 2, generator=torch.Generator(cuda).manual_seed(0))
    for encoder, ids in zip(encoders, tokens.ids):
        weight = encoder.get_input_embeddings().weight
        assert on_cuda(weight) and weight.dtype == torch.float32
        rows = cpu_numbers(weight[ids])
        assert torch.isfinite(rows).all() and rows.abs().sum() > 0
    tokens.start_training()
    with torch.no_grad():  # an optimizer step touches every row; the guard puts the old ones back
        for p in tokens.parameters():
            p.add_(1.0)
    tokens.restore_frozen_rows()
    for p, ids, snapshot in zip(tokens.parameters(), tokens.ids, tokens.snapshots):
        changed = (cpu_numbers(p) != cpu_numbers(snapshot)).any(dim=1).nonzero().flatten().tolist()
        assert changed == ids
    rows = tokens.new_rows()
    assert all(r.device.type == "cpu" and r.dtype == torch.float32 for r in rows.values())
