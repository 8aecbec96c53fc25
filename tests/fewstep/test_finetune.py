"""Trained tars of the SDXL trainer apply to the few-step models through replicate_weights, and come off cleanly."""

import numpy as np
from devkit.fewstep_oracle import TURBO_DEFAULTS
from PIL import Image


PLAIN = dict(prompt="a photo of a dog", num_inference_steps=2)


def test_trained_tar_changes_turbo_and_the_next_request_is_turbo_bitwise(turbo_run, lora_tar):
    plain = turbo_run(**PLAIN)[0]
    tuned = turbo_run(replicate_weights=str(lora_tar), lora_scale=1.0, **PLAIN)[0]
    assert np.abs(tuned.astype(int) - plain.astype(int)).mean() > 1.0
    np.testing.assert_array_equal(turbo_run(**PLAIN)[0], plain)


def test_switching_models_takes_a_fine_tune_off_the_shared_text_encoders(turbo_run, lora_tar):
    lightning = dict(model="sdxl-lightning-4step", **PLAIN)
    plain = turbo_run(**lightning)[0]
    turbo_run(replicate_weights=str(lora_tar), lora_scale=1.0, **PLAIN)  # applied to sdxl-turbo
    np.testing.assert_array_equal(turbo_run(**lightning)[0], plain)
    tuned = turbo_run(replicate_weights=str(lora_tar), lora_scale=1.0, **lightning)[0]
    assert not np.array_equal(tuned, plain)


def test_cog_weights_at_setup_are_the_default_of_every_request(turbo_run, lora_tar):
    from predict_turbo import Predictor

    tuned = turbo_run(replicate_weights=str(lora_tar), **PLAIN)[0]
    trained = Predictor()
    trained.setup(weights=str(lora_tar))
    [path] = trained.predict(**{**TURBO_DEFAULTS, **PLAIN})
    np.testing.assert_array_equal(np.array(Image.open(path)), tuned)
