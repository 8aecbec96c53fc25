"""Load SDXL base, refiner and safety checker once, and build every pipeline from shared modules.

One copy of each component: the img2img and inpaint pipelines reuse the base modules; the refiner
shares the base's VAE, text_encoder_2 and tokenizer_2 (so fine-tuned tokens work there too).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

import weights

from . import acceleration
from .safety import SafetyChecker

log = logging.getLogger(__name__)


def pick_device() -> tuple[str, torch.dtype]:
    """CUDA with fp16 when there is a GPU, else the CPU in fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def variant_of(directory: Path) -> str | None:
    """``"fp16"`` when the weight files are the fp16 variant (as in the production tars)."""
    return "fp16" if any(directory.glob("*/*.fp16.safetensors")) else None


@dataclass
class Models:
    device: str
    dtype: torch.dtype
    base: StableDiffusionXLPipeline
    img2img: StableDiffusionXLImg2ImgPipeline
    inpaint: StableDiffusionXLInpaintPipeline
    refiner: StableDiffusionXLImg2ImgPipeline
    safety: SafetyChecker
    # the configs the weights shipped with; every request's scheduler is built from these
    scheduler_config: dict
    refiner_scheduler_config: dict
    speed: acceleration.Acceleration | None = None  # the GPU fast path (acceleration.py)
    openvino: object | None = None  # SDXL_BACKEND=openvino: sdxl.openvino_backend.OpenVINOComponents


def load_base(directory: Path, device: str, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(
        directory, dtype=dtype, variant=variant_of(directory), use_safetensors=True, add_watermarker=False
    )
    return pipe.to(device)


def load_refiner(directory: Path, base: StableDiffusionXLPipeline) -> StableDiffusionXLImg2ImgPipeline:
    """The refiner pipeline: its own UNet and scheduler config, everything else from ``base``."""
    unet = UNet2DConditionModel.from_pretrained(
        directory, subfolder="unet", dtype=base.unet.dtype, variant=variant_of(directory), use_safetensors=True
    )
    scheduler = type(base.scheduler).from_pretrained(directory, subfolder="scheduler")
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    return refiner.to(base.device)


def assemble(base: StableDiffusionXLPipeline, refiner: StableDiffusionXLImg2ImgPipeline | None,
             safety: SafetyChecker | None, device: str, dtype: torch.dtype, scheduler_config: dict | None = None) -> Models:
    """The :class:`Models` of one base pipeline: img2img and inpaint share its modules, the scheduler configs
    are the weights' own (``scheduler_config`` overrides the base's, e.g. a few-step model's spacing)."""
    models = Models(
        device=device,
        dtype=dtype,
        base=base,
        # from_pipe converts the modules it shares to ``dtype`` (fp32 when not given): pass ours
        img2img=StableDiffusionXLImg2ImgPipeline.from_pipe(base, dtype=dtype),
        inpaint=StableDiffusionXLInpaintPipeline.from_pipe(base, dtype=dtype),
        refiner=refiner,
        safety=safety,
        scheduler_config=scheduler_config or base.scheduler.config,
        refiner_scheduler_config=refiner.scheduler.config if refiner is not None else None,
    )
    for pipe in (models.base, models.img2img, models.inpaint, models.refiner):
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
    return models


def load_all(device: str | None = None, dtype: torch.dtype | None = None) -> Models:
    """Everything the predictor needs, once; ``device``/``dtype`` default to :func:`pick_device`."""
    if device is None or dtype is None:
        device, dtype = pick_device()
    start = time.monotonic()
    from . import openvino_backend

    if openvino_backend.backend() == "openvino":  # OpenVINO UNets, VAE and text encoders on the CPU
        device, dtype = "cpu", torch.float32
        base, refiner = openvino_backend.load_pipelines(weights.resolve("sdxl-base"), weights.resolve("sdxl-refiner"))
    else:
        base = load_base(weights.resolve("sdxl-base"), acceleration.load_device(device), dtype)
        refiner = load_refiner(weights.resolve("sdxl-refiner"), base)
    safety = SafetyChecker(weights.resolve("safety-checker"), device, dtype)
    models = assemble(base, refiner, safety, device, dtype)
    if isinstance(base.unet, openvino_backend.OVUNet):
        openvino_backend.attach(models, weights.resolve("sdxl-base"))
    models.speed = acceleration.accelerate(models)
    log.info("models loaded on %s (%s) in %.1fs", device, dtype, time.monotonic() - start)
    return models
