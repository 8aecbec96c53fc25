"""One prediction, as stability-ai/sdxl runs it: pick the pipeline for the mode, denoise, optionally refine.

Everything is a plain diffusers pipeline call on the shared modules, so the images equal those of
the same diffusers pipelines called with the same weights, seed and settings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from PIL import Image

from .acceleration import prepare_decode
from .models import Models
from .schedulers import make_scheduler

log = logging.getLogger(__name__)

REFINE_MODES = ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]  # predict.py offers these
REFINER_STRENGTH = 0.3  # base_image_refiner: the refiner img2img's own default strength, as the reference ran it


def seed_or_random(seed: int | None) -> int:
    """The request's seed, or a random one when it names none (logged either way, so any image can be redone)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    log.info("Using seed: %d", seed)
    return seed


@dataclass(frozen=True)
class Settings:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_outputs: int
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    prompt_strength: float
    seed: int
    refine: str
    high_noise_frac: float
    refine_steps: int | None
    apply_watermark: bool
    lora_scale: float


def generate(
    models: Models,
    settings: Settings,
    *,
    image: Image.Image | None = None,
    mask: Image.Image | None = None,
    lora: bool = False,
    watermarker=None,
) -> list[Image.Image]:
    """Run the request ``settings`` and return the finished images (before the safety checker)."""
    if settings.refine not in REFINE_MODES:
        raise ValueError(f"refine: {settings.refine!r} is not one of {', '.join(REFINE_MODES)}")
    kwargs: dict = {}
    if image is not None and mask is not None:
        log.info("inpainting mode")
        if mask.size != image.size:
            log.info("mask %dx%d resized to the image's %dx%d", *mask.size, *image.size)
            mask = mask.resize(image.size, Image.Resampling.LANCZOS)
        pipe = models.inpaint
        kwargs.update(image=image, mask_image=mask, strength=settings.prompt_strength, width=settings.width, height=settings.height)
    elif image is not None:
        log.info("img2img mode")
        pipe = models.img2img
        kwargs.update(image=image, strength=settings.prompt_strength)
    else:
        log.info("txt2img mode")
        pipe = models.base
        kwargs.update(width=settings.width, height=settings.height)

    refining = settings.refine != "no_refiner"
    if settings.refine == "expert_ensemble_refiner":
        kwargs.update(output_type="latent", denoising_end=settings.high_noise_frac)
    elif settings.refine == "base_image_refiner":
        kwargs.update(output_type="latent")
    if lora:
        kwargs["cross_attention_kwargs"] = {"scale": settings.lora_scale}

    prepare_decode(models, *(image.size if image is not None else (settings.width, settings.height)))
    pipe.scheduler = make_scheduler(settings.scheduler, models.scheduler_config)
    pipe.watermark = None if refining or not settings.apply_watermark else watermarker
    generator = torch.Generator(models.device).manual_seed(settings.seed)
    common = {
        "prompt": [settings.prompt] * settings.num_outputs,
        "negative_prompt": [settings.negative_prompt] * settings.num_outputs,
        "guidance_scale": settings.guidance_scale,
        "generator": generator,
        "num_inference_steps": settings.num_inference_steps,
    }
    images = pipe(**common, **kwargs).images
    if not refining:
        return images

    refiner = models.refiner
    refiner.scheduler = make_scheduler(settings.scheduler, models.refiner_scheduler_config)
    refiner.watermark = watermarker if settings.apply_watermark else None
    refiner_kwargs = {"image": images}
    if settings.refine == "expert_ensemble_refiner":
        refiner_kwargs["denoising_start"] = settings.high_noise_frac
    else:
        refiner_kwargs["strength"] = REFINER_STRENGTH
        if settings.refine_steps:
            common["num_inference_steps"] = settings.refine_steps
    return refiner(**common, **refiner_kwargs).images
