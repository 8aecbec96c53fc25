"""The real predictor and trainer on the CPU in half precision (fp16 and bf16), end to end: every
predict mode (txt2img against plain diffusers in the same dtype, bitwise), and a training round
trip (train with half-precision frozen weights, export, load the tar into the predictor, predict)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from devkit.media import init_image_and_mask
from devkit.oracle import DEFAULTS, ORACLE_SCHEDULERS

import weights
from device.test_predict import MODES, SMALL, predict
from device.test_training import photos_zip, small_config

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", params=list(DTYPES))
def half(request):
    """(name, dtype, a Predictor set up on the CPU with every model in that dtype)."""
    from predict import Predictor

    dtype = DTYPES[request.param]
    with mock.patch("sdxl.models.pick_device", return_value=("cpu", dtype)):
        p = Predictor()
        p.setup()
    return request.param, dtype, p


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return init_image_and_mask(tmp_path_factory.mktemp("half-inputs"), square=False)


def test_every_mode_in_half_precision(half, files):
    _, dtype, p = half
    assert p.models.base.unet.dtype == dtype and p.models.safety.model.dtype == dtype
    for mode, overrides in MODES.items():
        images = predict(p, files, **overrides)
        assert images[0].shape == (64, 64, 3), mode


def test_txt2img_in_half_precision_equals_plain_diffusers(half, files):
    from diffusers import StableDiffusionXLPipeline

    _, dtype, p = half
    ours = predict(p, files, disable_safety_checker=True, apply_watermark=False)[0]
    pipe = StableDiffusionXLPipeline.from_pretrained(weights.resolve("sdxl-base"), variant="fp16", dtype=dtype,
                                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = ORACLE_SCHEDULERS[DEFAULTS["scheduler"]](pipe.scheduler.config)
    theirs = pipe(prompt=DEFAULTS["prompt"], negative_prompt=DEFAULTS["negative_prompt"],
                  guidance_scale=DEFAULTS["guidance_scale"], num_inference_steps=SMALL["num_inference_steps"],
                  width=SMALL["width"], height=SMALL["height"],
                  generator=torch.Generator("cpu").manual_seed(DEFAULTS["seed"])).images[0]
    np.testing.assert_array_equal(ours, np.array(theirs))


def test_training_round_trip_in_half_precision(half, files, tmp_path):
    from accelerate import Accelerator

    from training import loop
    from training.export import save_weights, write_tar
    from training.run import prepare_dataset

    name, dtype, p = half
    cfg = small_config(seed=3)
    prepared = prepare_dataset(photos_zip(tmp_path / "in.zip"), tmp_path / "prepared", cfg)
    state = loop.setup(cfg, prepared, accelerator=Accelerator(cpu=True, mixed_precision=name))
    assert state.unet.dtype == dtype  # the frozen LoRA base; the LoRA itself trains in fp32
    history = loop.fit(state, tmp_path / "work")
    assert all(np.isfinite(s.loss) for s in history.steps)
    tar = write_tar(save_weights(tmp_path / "out", state), tmp_path / "trained_model.tar")
    images = predict(p, files, prompt="a photo of TOK", replicate_weights=str(tar))
    assert images[0].shape == (64, 64, 3)
    predict(p, files)  # and back to the base model
