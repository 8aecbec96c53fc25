"""Fixtures of the few-step model tests: one set-up predict_turbo predictor, its oracles, input files, a LoRA tar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from devkit.fewstep_oracle import TURBO_DEFAULTS, FewStepOracle
from devkit.media import picture
from devkit.reference_tars import reference_lora_tar
from PIL import Image

import weights


@pytest.fixture(scope="session")
def turbo_predictor():
    from predict_turbo import Predictor

    p = Predictor()
    p.setup()
    return p


@pytest.fixture(scope="session")
def turbo_run(turbo_predictor):
    """predict_turbo's predict() with TURBO_DEFAULTS overridden; the images as uint8 arrays."""

    def _run(**overrides):
        paths = turbo_predictor.predict(**{**TURBO_DEFAULTS, **overrides})
        return [np.array(Image.open(p)) for p in paths]

    return _run


@pytest.fixture(scope="session")
def fewstep_oracle():
    """``fewstep_oracle(model)``: that model's oracle, loaded once per session."""
    loaded = {}

    def _get(model: str) -> FewStepOracle:
        if model not in loaded:
            loaded[model] = FewStepOracle(model)
        return loaded[model]

    return _get


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> dict[str, Path]:
    """A 64x64 init image and an inpaint mask (white square = repaint) as PNG files."""
    d = tmp_path_factory.mktemp("fewstep-inputs")
    picture((64, 64), seed=5).save(d / "image.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(d / "mask.png")
    return {"image": d / "image.png", "mask": d / "mask.png"}


@pytest.fixture(scope="session")
def lora_tar(tmp_path_factory):
    """A reference LoRA tar (rank 4, two tokens) shaped for the SDXL-Turbo UNet."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(weights.resolve("sdxl-turbo"), subfolder="unet", variant="fp16")
    return reference_lora_tar(tmp_path_factory.mktemp("fewstep-lora") / "trained_model.tar", unet)
