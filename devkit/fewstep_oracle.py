"""The few-step oracle: diffusers AutoPipelines loaded from the weight directories as the model cards load them,
and the predict_turbo inputs the tests start from (TURBO_DEFAULTS).

Written from the model cards, not from sdxl/: the oracle must not share the code it checks.

- SDXL-Turbo: ``AutoPipelineForText2Image.from_pretrained("stabilityai/sdxl-turbo", variant="fp16")`` (the
  repo's own scheduler), ``guidance_scale=0.0``; image-to-image with ``AutoPipelineForImage2Image``.
- SDXL-Lightning: ``UNet2DConditionModel.from_config(base, subfolder="unet")`` +
  ``load_state_dict(load_file(sdxl_lightning_<N>step_unet.safetensors))`` on the base pipeline, then
  ``EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")``, guidance 0.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import load_file

import weights

from .oracle import DEFAULTS

# predict_turbo's inputs as Cog passes them when the request names none
# the inputs both predictors have start from the main oracle's DEFAULTS (width/height: the tests' size, where the
# predictor's own default, None, is the model's native size); then the few-step model's own
TURBO_DEFAULTS = {
    **{k: DEFAULTS[k] for k in ("prompt", "negative_prompt", "image", "mask", "width", "height", "num_outputs",
                                "seed", "apply_watermark", "lora_scale", "replicate_weights",
                                "disable_safety_checker", "output_format", "output_quality")},
    "num_inference_steps": None,
    "guidance_scale": None,
    "prompt_strength": 0.5,
    "model": "sdxl-turbo",
}

AUTO_PIPELINES = {
    "txt2img": AutoPipelineForText2Image,
    "img2img": AutoPipelineForImage2Image,
    "inpaint": AutoPipelineForInpainting,
}


class FewStepOracle:
    def __init__(self, model: str):
        directory = weights.resolve(model)
        components = {}
        if model.startswith("sdxl-lightning-"):
            steps = model.removeprefix("sdxl-lightning-")
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(directory, subfolder="unet"))
            unet.load_state_dict(load_file(directory / f"sdxl_lightning_{steps}_unet.safetensors"))
            components["unet"] = unet
        self.pipes = {}
        for mode, auto in AUTO_PIPELINES.items():
            pipe = auto.from_pretrained(directory, variant="fp16", dtype=torch.float32, **components)
            if model.startswith("sdxl-lightning-"):
                pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
            pipe.set_progress_bar_config(disable=True)
            self.pipes[mode] = pipe

    def __call__(self, mode: str, *, prompt: str, steps: int, seed: int, num_outputs: int = 1, width: int = 64,
                 height: int = 64, image=None, mask=None, strength: float | None = None) -> list[np.ndarray]:
        args = dict(
            prompt=[prompt] * num_outputs,
            num_inference_steps=steps,
            guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(seed),
        )
        if mode == "txt2img":
            args.update(width=width, height=height)
        else:
            args.update(image=Image.open(image).convert("RGB"), strength=strength)
        if mode == "inpaint":
            args.update(mask_image=Image.open(mask).convert("L"), width=width, height=height)
        return [np.array(im) for im in self.pipes[mode](**args).images]
