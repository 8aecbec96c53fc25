"""predict_turbo's images equal the model cards' diffusers set-ups, bitwise, for every model and mode.

SDXL-Turbo: AutoPipelineFor{Text2Image,Image2Image,Inpainting} from the sdxl-turbo directory, guidance 0.
SDXL-Lightning: the base pipeline with the step-count UNet file and EulerDiscreteScheduler "trailing", guidance 0.
Both sides run the same tiny weights on CPU in fp32 with the same seed.
"""

import numpy as np
import pytest


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_turbo_txt2img_matches_the_model_card(turbo_run, fewstep_oracle, steps):
    ours = turbo_run(num_inference_steps=steps, num_outputs=2)
    _assert_same(ours, fewstep_oracle("sdxl-turbo")("txt2img", prompt="An astronaut riding a rainbow unicorn",
                                                    steps=steps, seed=1234, num_outputs=2))


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
@pytest.mark.parametrize("steps,strength", [(2, 0.5), (4, 0.3)])
def test_turbo_image_modes_match_the_model_card(turbo_run, fewstep_oracle, image_files, mode, steps, strength):
    files = {"image": image_files["image"], "mask": image_files["mask"] if mode == "inpaint" else None}
    ours = turbo_run(num_inference_steps=steps, prompt_strength=strength, **files)
    theirs = fewstep_oracle("sdxl-turbo")(mode, prompt="An astronaut riding a rainbow unicorn", steps=steps,
                                          seed=1234, strength=strength, **files)
    _assert_same(ours, theirs)


def test_turbo_img2img_default_steps_are_the_model_cards_two_at_strength_one_half(turbo_run, fewstep_oracle,
                                                                                  image_files):
    """Left blank, num_inference_steps is Turbo's 1, raised to 2 so that 2 x 0.5 denoises one step (as the card)."""
    ours = turbo_run(image=image_files["image"], prompt_strength=0.5)
    theirs = fewstep_oracle("sdxl-turbo")("img2img", prompt="An astronaut riding a rainbow unicorn", steps=2,
                                          seed=1234, image=image_files["image"], strength=0.5)
    _assert_same(ours, theirs)


@pytest.mark.parametrize(
    "model,steps,mode",
    [("sdxl-lightning-4step", 4, "txt2img"), ("sdxl-lightning-4step", 4, "img2img"),
     ("sdxl-lightning-4step", 4, "inpaint"), ("sdxl-lightning-8step", 8, "txt2img")],
)
def test_lightning_matches_its_model_card(turbo_run, fewstep_oracle, image_files, model, steps, mode):
    files = {}
    if mode != "txt2img":
        files = {"image": image_files["image"], "mask": image_files["mask"] if mode == "inpaint" else None}
    ours = turbo_run(model=model, **files)  # steps left blank: the model's own count
    theirs = fewstep_oracle(model)(mode, prompt="An astronaut riding a rainbow unicorn", steps=steps, seed=1234,
                                   strength=0.5 if files else None, **files)
    _assert_same(ours, theirs)


def test_models_differ_and_switching_back_gives_the_same_images(turbo_run):
    turbo = turbo_run()[0]
    lightning = turbo_run(model="sdxl-lightning-4step", num_inference_steps=1)[0]
    assert not np.array_equal(turbo, lightning)
    np.testing.assert_array_equal(turbo_run()[0], turbo)


def test_guidance_above_one_turns_on_the_negative_prompt(turbo_run):
    """guidance_scale <= 1: no classifier-free guidance, so the negative prompt cannot matter; above 1 it does."""
    plain = turbo_run(num_inference_steps=2)[0]
    np.testing.assert_array_equal(turbo_run(num_inference_steps=2, negative_prompt="a cat")[0], plain)
    guided = turbo_run(num_inference_steps=2, guidance_scale=3.0)[0]
    assert not np.array_equal(turbo_run(num_inference_steps=2, guidance_scale=3.0, negative_prompt="a cat")[0], guided)
