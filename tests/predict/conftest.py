"""Fixtures for predictor tests: one set-up predictor, the diffusers oracle, input files, trained tars."""

from __future__ import annotations

from pathlib import Path

import pytest
from devkit.media import init_image_and_mask
from devkit.oracle import Oracle
from devkit.reference_tars import reference_lora_tar, reference_unet_tar

import weights


@pytest.fixture(scope="session")
def oracle():
    return Oracle(watermark=True)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """An init image (gradient + square) and an inpaint mask (white square = repaint), as PNG files."""
    return init_image_and_mask(tmp_path_factory.mktemp("inputs"))


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
