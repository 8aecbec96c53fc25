"""The oracle: plain diffusers pipelines loaded straight from the weight directories, as the diffusers docs do."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

import weights

# Written out independently of sdxl/schedulers.py: the oracle must not share the code it checks.
ORACLE_SCHEDULERS = {
    "DDIM": lambda c: DDIMScheduler.from_config(c),
    "DPMSolverMultistep": lambda c: DPMSolverMultistepScheduler.from_config(c),
    "HeunDiscrete": lambda c: HeunDiscreteScheduler.from_config(c),
    "KarrasDPM": lambda c: DPMSolverMultistepScheduler.from_config(c, use_karras_sigmas=True),
    "K_EULER_ANCESTRAL": lambda c: EulerAncestralDiscreteScheduler.from_config(c),
    "K_EULER": lambda c: EulerDiscreteScheduler.from_config(c),
    "PNDM": lambda c: PNDMScheduler.from_config(c),
}

DEFAULTS = dict(
    prompt="An astronaut riding a rainbow unicorn",
    negative_prompt="",
    image=None,
    mask=None,
    width=64,
    height=64,
    num_outputs=1,
    scheduler="K_EULER",
    num_inference_steps=4,
    guidance_scale=7.5,
    prompt_strength=0.8,
    seed=1234,
    refine="no_refiner",
    high_noise_frac=0.8,
    refine_steps=None,
    apply_watermark=True,
    lora_scale=0.6,
    replicate_weights=None,
    disable_safety_checker=False,
    output_format="png",
    output_quality=80,
)



def assert_images_close(ours, theirs, tolerance: int) -> None:
    """The same number of images, of the same shapes, every pixel within ``tolerance`` levels."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= tolerance


class Oracle:
    """Plain diffusers pipelines loaded straight from the weight directories, as the diffusers docs do."""

    def __init__(self, watermark: bool):
        base_dir, refiner_dir = weights.resolve("sdxl-base"), weights.resolve("sdxl-refiner")
        kw = dict(variant="fp16", dtype=torch.float32, add_watermarker=watermark)
        self.base = StableDiffusionXLPipeline.from_pretrained(base_dir, **kw)
        self.img2img = StableDiffusionXLImg2ImgPipeline.from_pretrained(base_dir, **kw)
        self.inpaint = StableDiffusionXLInpaintPipeline.from_pretrained(base_dir, **kw)
        self.refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            refiner_dir, text_encoder_2=self.base.text_encoder_2, vae=self.base.vae, **kw
        )
        for pipe in (self.base, self.img2img, self.inpaint, self.refiner):
            pipe.set_progress_bar_config(disable=True)
        # schedulers are always built from the configs the weights shipped with
        self.config, self.refiner_config = self.base.scheduler.config, self.refiner.scheduler.config

    def __call__(self, mode: str, **kw) -> list[np.ndarray]:
        s = {**DEFAULTS, **kw}
        scheduler, refine = s["scheduler"], s["refine"]
        pipe = {"txt2img": self.base, "img2img": self.img2img, "inpaint": self.inpaint}[mode]
        pipe.scheduler = ORACLE_SCHEDULERS[scheduler](self.config)
        args = dict(
            prompt=[s["prompt"]] * s["num_outputs"],
            negative_prompt=[s["negative_prompt"]] * s["num_outputs"],
            guidance_scale=s["guidance_scale"],
            num_inference_steps=s["num_inference_steps"],
            generator=torch.Generator("cpu").manual_seed(s["seed"]),
        )
        extra = {}
        if mode != "txt2img":
            extra.update(image=Image.open(s["image"]).convert("RGB"), strength=s["prompt_strength"])
        if mode == "inpaint":
            extra.update(mask_image=Image.open(s["mask"]).convert("L"), width=s["width"], height=s["height"])
        if mode == "txt2img":
            extra.update(width=s["width"], height=s["height"])
        if refine == "expert_ensemble_refiner":
            extra.update(output_type="latent", denoising_end=s["high_noise_frac"])
        elif refine == "base_image_refiner":
            extra.update(output_type="latent")
        images = pipe(**args, **extra).images
        if refine != "no_refiner":
            self.refiner.scheduler = ORACLE_SCHEDULERS[scheduler](self.refiner_config)
            rk = {"image": images}
            if refine == "expert_ensemble_refiner":
                rk["denoising_start"] = s["high_noise_frac"]
            elif s["refine_steps"]:
                args["num_inference_steps"] = s["refine_steps"]
            images = self.refiner(**args, **rk).images
        return [np.array(im) for im in images]
