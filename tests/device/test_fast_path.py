"""The fast path's image changes, against plain diffusers with a stated tolerance: fused QKV projections and
channels_last compute the same products in another order (one matmul instead of three; another memory layout),
so fp32 rounding may move a pixel by one level, never more than TOLERANCE."""

from __future__ import annotations

import numpy as np
import torch
from devkit.oracle import DEFAULTS, Oracle

from sdxl.acceleration import Acceleration
from sdxl.generate import Settings, generate
from sdxl.models import load_all

TOLERANCE = 2  # uint8 levels


def test_fused_qkv_and_channels_last_images_match_plain_diffusers():
    models = load_all("cpu", torch.float32)
    models.speed = Acceleration("cpu", fuse_qkv=True)
    models.speed.fuse(models)
    for module in (models.base.unet, models.base.vae):
        module.to(memory_format=torch.channels_last)
    assert {type(p).__name__ for p in models.base.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    fields = {k: DEFAULTS[k] for k in Settings.__dataclass_fields__ if k in DEFAULTS}
    settings = Settings(**{**fields, "refine_steps": None, "apply_watermark": False})
    ours = np.array(generate(models, settings)[0]).astype(int)
    theirs = Oracle(watermark=False)("txt2img", apply_watermark=False)[0].astype(int)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    models.speed.unfuse(models)  # and unfused, the images are plain diffusers' again, bitwise
    for module in (models.base.unet, models.base.vae):
        module.to(memory_format=torch.contiguous_format)
    np.testing.assert_array_equal(np.array(generate(models, settings)[0]), theirs.astype(np.uint8))
