"""A few-step request is checked and completed before any work: the model's defaults, its limits, steps x strength."""

import logging

import pytest

from sdxl.checks import InputError, strength_steps as steps_for_strength
from sdxl.fewstep import plan_request
from sdxl.model_specs import MODEL_SPECS

TURBO, LIGHTNING_4, LIGHTNING_8 = (MODEL_SPECS[n] for n in ("sdxl-turbo", "sdxl-lightning-4step", "sdxl-lightning-8step"))


def plan(spec=TURBO, **kw):
    request = dict(prompt="a dog", negative_prompt="", width=None, height=None, num_inference_steps=None,
                   guidance_scale=None, prompt_strength=0.5, has_image=False, has_mask=False)
    return plan_request(spec, **{**request, **kw})


@pytest.mark.parametrize("spec,size,steps", [(TURBO, 512, 1), (LIGHTNING_4, 1024, 4), (LIGHTNING_8, 1024, 8)])
def test_blank_inputs_are_the_models_own_recommendation(spec, size, steps):
    p = plan(spec)
    assert (p.width, p.height, p.num_inference_steps, p.guidance_scale) == (size, size, steps, 0.0)


def test_given_inputs_are_kept_and_sizes_round_down_to_multiples_of_8():
    p = plan(width=300, height=1000, num_inference_steps=3, guidance_scale=2.0)
    assert (p.width, p.height, p.num_inference_steps, p.guidance_scale) == (296, 1000, 3, 2.0)


def test_blank_steps_with_an_image_are_raised_until_one_step_is_denoised(caplog):
    with caplog.at_level(logging.INFO):
        assert plan(has_image=True, prompt_strength=0.5).num_inference_steps == 2
    assert "using 2 steps" in caplog.text
    assert plan(has_image=True, prompt_strength=0.3).num_inference_steps == 4  # int(4 * 0.3) = 1
    assert plan(has_image=True, prompt_strength=1.0).num_inference_steps == 1
    assert plan(LIGHTNING_4, has_image=True, prompt_strength=0.5).num_inference_steps == 4  # already 2 denoised


@pytest.mark.parametrize("strength", [0.1, 0.11, 0.3, 1 / 3, 0.7, 0.99])
def test_raised_steps_are_the_fewest_that_denoise_one_step(strength):
    steps = plan(has_image=True, prompt_strength=strength).num_inference_steps
    assert steps_for_strength(steps, strength) == 1
    assert steps == 1 or steps_for_strength(steps - 1, strength) == 0


def test_given_steps_that_denoise_nothing_are_refused_naming_both_inputs():
    with pytest.raises(InputError, match=r"^num_inference_steps, prompt_strength: .*int\(1 x 0\.5\) = 0.*num_inference_steps of at least 2"):
        plan(has_image=True, num_inference_steps=1, prompt_strength=0.5)
    with pytest.raises(InputError, match=r"^num_inference_steps, prompt_strength: .*int\(3 x 0\.3\) = 0"):
        plan(has_image=True, num_inference_steps=3, prompt_strength=0.3)


def test_strength_too_small_for_any_allowed_step_count_is_refused():
    with pytest.raises(InputError, match=r"prompt_strength: 0\.05 needs 20 steps.*limit of 10"):
        plan(has_image=True, prompt_strength=0.05)
    with pytest.raises(InputError, match=r"^num_inference_steps, prompt_strength: .*use prompt_strength of at least 0\.10$"):
        plan(has_image=True, num_inference_steps=10, prompt_strength=0.05)
    with pytest.raises(InputError, match="^num_inference_steps, prompt_strength: prompt_strength 0 leaves the image as it is"):
        plan(has_image=True, prompt_strength=0.0)


def test_out_of_limit_requests_are_refused_naming_the_input():
    with pytest.raises(InputError, match="num_inference_steps: 11 is over sdxl-turbo's limit of 10"):
        plan(num_inference_steps=11)
    with pytest.raises(InputError, match="width: 4096 is over the limit of 2048"):
        plan(width=4096)
    with pytest.raises(InputError, match="height: 4 is too small"):
        plan(height=4)
    with pytest.raises(InputError, match="mask: a mask needs an image"):
        plan(has_mask=True)
    with pytest.raises(InputError, match="prompt: 10001 characters"):
        plan(prompt="x" * 10001)


def test_few_step_models_offer_no_refiner_and_recommend_no_guidance():
    for spec in (TURBO, LIGHTNING_4, LIGHTNING_8):
        assert not spec.refiner and spec.guidance_scale == 0.0 and spec.timestep_spacing == "trailing"
    assert MODEL_SPECS["sdxl"].refiner
