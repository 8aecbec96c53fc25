"""predict_turbo on SDXL_BACKEND=openvino: SDXL-Turbo and SDXL-Lightning match their model cards' diffusers set-ups.

The OpenVINO side runs fp32 IR computing in f32 (SDXL_OPENVINO_WEIGHTS=fp32, SDXL_OPENVINO_INFERENCE=f32) converted from the same tiny weight files; tolerance
1 pixel level, for the reason tests/predict/test_openvino.py gives (OpenVINO sums in another order, ~1e-6
relative). Few-step models load on first use, so the backend settings stay set around every request.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from devkit.fewstep_oracle import TURBO_DEFAULTS
from devkit.oracle import assert_images_close
from PIL import Image

import weights

TOLERANCE = 1
OV = {"SDXL_BACKEND": "openvino", "SDXL_OPENVINO_WEIGHTS": "fp32", "SDXL_OPENVINO_INFERENCE": "f32"}
PROMPT = TURBO_DEFAULTS["prompt"]


@contextlib.contextmanager
def _openvino():
    """The OpenVINO settings, set for the block (and put back after)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in OV.items():
            mp.setenv(k, v)
        yield


def _close(ours, theirs):
    assert_images_close(ours, theirs, TOLERANCE)


@pytest.fixture(scope="module")
def ov_turbo():
    from predict_turbo import Predictor

    with _openvino():
        p = Predictor()
        p.setup()
    return p


@pytest.fixture(scope="module")
def ov_turbo_run(ov_turbo):
    def _run(**overrides):
        with _openvino():
            paths = ov_turbo.predict(**{**TURBO_DEFAULTS, **overrides})
        return [np.array(Image.open(p)) for p in paths]

    return _run


def test_the_few_step_models_run_openvino_modules_sharing_text_encoders_and_vae(ov_turbo, ov_turbo_run):
    from sdxl.openvino_backend import OVTextEncoder, OVUNet, OVVae

    ov_turbo_run(model="sdxl-lightning-4step", num_inference_steps=1)  # loads Lightning on first use
    turbo, lightning = ov_turbo.models.get("sdxl-turbo"), ov_turbo.models.get("sdxl-lightning-4step")
    for m in (turbo, lightning):
        assert isinstance(m.base.unet, OVUNet) and isinstance(m.base.vae, OVVae)
        assert isinstance(m.base.text_encoder_2, OVTextEncoder)
    assert lightning.base.unet is not turbo.base.unet
    shared = [n for n in ("text_encoder", "text_encoder_2", "vae")
              if os.path.realpath(weights.resolve("sdxl-turbo") / n)
              == os.path.realpath(weights.resolve("sdxl-lightning-4step") / n)]
    for name in shared:
        assert getattr(lightning.base, name) is getattr(turbo.base, name)


@pytest.mark.parametrize("steps", [1, 4])
def test_turbo_txt2img_matches_the_model_card(ov_turbo_run, fewstep_oracle, steps):
    _close(ov_turbo_run(num_inference_steps=steps, num_outputs=2),
           fewstep_oracle("sdxl-turbo")("txt2img", prompt=PROMPT, steps=steps, seed=1234, num_outputs=2))


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_turbo_image_modes_match_the_model_card(ov_turbo_run, fewstep_oracle, image_files, mode):
    files = {"image": image_files["image"], "mask": image_files["mask"] if mode == "inpaint" else None}
    _close(ov_turbo_run(num_inference_steps=2, prompt_strength=0.5, **files),
           fewstep_oracle("sdxl-turbo")(mode, prompt=PROMPT, steps=2, seed=1234, strength=0.5, **files))


def test_lightning_from_its_unet_file_matches_its_model_card(ov_turbo_run, fewstep_oracle):
    _close(ov_turbo_run(model="sdxl-lightning-4step"),
           fewstep_oracle("sdxl-lightning-4step")("txt2img", prompt=PROMPT, steps=4, seed=1234, strength=None))


@pytest.mark.parametrize("model", ["sdxl-turbo", "sdxl-lightning-4step"])
def test_a_lora_runs_the_torch_unet_as_on_torch_and_back_to_base_is_exact(ov_turbo_run, turbo_run, lora_tar,
                                                                           model):
    """replicate_weights on OpenVINO: the torch UNet (Lightning's from its UNet file) with the LoRA, as the torch
    predictor does it; the next plain request is the OpenVINO one again, unchanged."""
    plain = dict(model=model, prompt="a photo of a dog", num_inference_steps=2)
    before = ov_turbo_run(**plain)
    tuned = dict(replicate_weights=str(lora_tar), lora_scale=1.0, **plain)
    _close(ov_turbo_run(**tuned), turbo_run(**tuned))
    np.testing.assert_array_equal(ov_turbo_run(**plain)[0], before[0])
