"""Fixtures for predictor tests: one set-up predictor, the diffusers oracle, input files, trained tars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from devkit.oracle import Oracle
from devkit.reference_tars import reference_lora_tar, reference_unet_tar
from PIL import Image

import weights


@pytest.fixture(scope="session")
def oracle():
    return Oracle(watermark=True)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """An init image (gradient + square) and an inpaint mask (white square = repaint), as PNG files."""
    d = tmp_path_factory.mktemp("inputs")
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    rgb[20:44, 20:44] = (250, 40, 40)
    Image.fromarray(rgb).save(d / "image.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return {"image": d / "image.png", "mask": d / "mask.png"}


@pytest.fixture(scope="session")
def fresh_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(weights.resolve("sdxl-base"), subfolder="unet", variant="fp16")


@pytest.fixture(scope="session")
def lora_tar(tmp_path_factory, fresh_unet) -> Path:
    return reference_lora_tar(tmp_path_factory.mktemp("lora") / "trained_model.tar", fresh_unet)


@pytest.fixture(scope="session")
def unet_tar(tmp_path_factory, fresh_unet) -> Path:
    return reference_unet_tar(tmp_path_factory.mktemp("unet") / "trained_model.tar", fresh_unet)
