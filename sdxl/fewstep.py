"""Few-step models (SDXL-Turbo, SDXL-Lightning) on the same engine as SDXL: load on first use, plan a request.

A loaded model is an :class:`sdxl.models.Models` without a refiner, so ``sdxl.generate.generate`` runs it
unchanged and ``sdxl.finetune.FineTunes`` applies trained weights to it unchanged. Models whose weight
directories hold the same files (the text encoders, tokenizers and fp16-fix VAE all these models take from
SDXL base) share one copy of those modules; each model adds only its UNet.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import torch
from diffusers import (
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

import weights

from .checks import (
    InputError,
    check_mask_has_image,
    check_seed,
    check_strength_leaves_a_step,
    check_text_length,
    multiple_of_8,
    strength_steps,
)
from .model_specs import MODEL_SPECS, ModelSpec
from .models import Models, assemble, pick_device, variant_of
from .safety import SafetyChecker

log = logging.getLogger(__name__)

SHAREABLE = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
MAX_SIDE = 2048  # width/height: 4x the pixels of the largest native size; far past what few-step models do well


def load_unet(spec: ModelSpec, directory, device: str, dtype: torch.dtype) -> UNet2DConditionModel | None:
    """The UNet of a model that ships it as one state-dict file (Lightning), as its model card loads it;
    None when the directory's own ``unet/`` holds the weights."""
    if spec.unet_file is None:
        return None
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(directory, subfolder="unet"))
    unet = unet.to(device, dtype)
    unet.load_state_dict(load_file(directory / spec.unet_file, device=device))
    return unet


def load_model(spec: ModelSpec, device: str, dtype: torch.dtype, safety: SafetyChecker,
               shared: dict[str, object]) -> Models:
    """Model ``spec`` as :class:`Models` (no refiner), reusing the modules in ``shared`` (real path -> module)
    whose files are the same, and adding its own to it."""
    from . import openvino_backend

    directory = weights.resolve(spec.weights)
    reuse = {}
    for sub in SHAREABLE:
        module = shared.get(os.path.realpath(directory / sub))
        if module is not None:
            reuse[sub] = module
    if openvino_backend.backend() == "openvino":  # OpenVINO UNet, VAE and text encoders on the CPU
        base = openvino_backend.base_pipeline(directory, spec.unet_file, reuse)
    else:
        unet = load_unet(spec, directory, device, dtype)
        if unet is not None:
            reuse["unet"] = unet
        base = StableDiffusionXLPipeline.from_pretrained(
            directory, dtype=dtype, variant=variant_of(directory), use_safetensors=True, add_watermarker=False,
            **reuse
        ).to(device)
    for sub in SHAREABLE:
        shared.setdefault(os.path.realpath(directory / sub), getattr(base, sub))
    config = dict(base.scheduler.config)
    if spec.timestep_spacing:
        config["timestep_spacing"] = spec.timestep_spacing
    models = assemble(base, None, safety, device, dtype, scheduler_config=config)
    if isinstance(base.unet, openvino_backend.OVUNet):
        openvino_backend.attach(models, directory, spec.unet_file)
    return models


class FewStepModels:
    """The few-step models of one deployment: ``default`` loaded now, any other on its first request."""

    def __init__(self, default: str, device: str | None = None, dtype: torch.dtype | None = None):
        if device is None or dtype is None:
            device, dtype = pick_device()
        from . import openvino_backend

        if openvino_backend.backend() == "openvino":
            device, dtype = "cpu", torch.float32
        self.device, self.dtype = device, dtype
        self.safety = SafetyChecker(weights.resolve("safety-checker"), device, dtype)
        self.shared: dict[str, object] = {}
        self.loaded: dict[str, Models] = {}
        self.get(default)

    def get(self, name: str) -> Models:
        if name not in self.loaded:
            start = time.monotonic()
            self.loaded[name] = load_model(MODEL_SPECS[name], self.device, self.dtype, self.safety, self.shared)
            log.info("%s loaded on %s (%s) in %.1fs", name, self.device, self.dtype, time.monotonic() - start)
        return self.loaded[name]


@dataclass(frozen=True)
class Plan:
    """A few-step request with every None resolved to the model's recommendation."""

    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float


def check_steps_and_strength(spec: ModelSpec, steps: int | None, strength: float) -> int:
    """The step count for an image request: ``steps`` when it denoises at least one step (else refused by the
    main model's rule, naming both inputs); when ``steps`` is None, the model's default raised (logged) until
    it does."""
    if steps is not None or strength <= 0:
        steps = spec.default_steps if steps is None else steps
        check_strength_leaves_a_step(steps, strength, max_steps=spec.max_steps)
        return steps
    steps = spec.default_steps
    if strength_steps(steps, strength) >= 1:
        return steps
    needed = _fewest_steps(strength)
    if needed > spec.max_steps:
        raise InputError("prompt_strength", f"{strength} needs {needed} steps to denoise one, over {spec.name}'s "
                                            f"limit of {spec.max_steps} num_inference_steps; use a prompt_strength "
                                            f"of at least {1 / spec.max_steps:g}")
    log.info("num_inference_steps: %d x prompt_strength %g denoises no step; using %d steps (%d denoised)",
             steps, strength, needed, strength_steps(needed, strength))
    return needed


def _fewest_steps(strength: float) -> int:
    steps = max(1, math.ceil(1 / strength) - 1)
    while strength_steps(steps, strength) < 1:  # int() of a float product: step up past rounding
        steps += 1
    return steps


def plan_request(
    spec: ModelSpec,
    *,
    prompt: str,
    negative_prompt: str,
    width: int | None,
    height: int | None,
    num_inference_steps: int | None,
    guidance_scale: float | None,
    prompt_strength: float,
    has_image: bool,
    has_mask: bool,
    seed: int | None = None,
) -> Plan:
    """Check a few-step request before any work with the main model's rules (sdxl/checks.py; each error
    names the inputs) and fill in the model's defaults."""
    check_text_length("prompt", prompt)
    check_text_length("negative_prompt", negative_prompt)
    check_mask_has_image(has_image, has_mask)
    check_seed(seed)
    sides = {}
    for name, value in (("width", width), ("height", height)):
        value = spec.size if value is None else value
        if value > MAX_SIDE:
            raise InputError(name, f"{value} is over the limit of {MAX_SIDE}")
        sides[name] = multiple_of_8(value, name)
    steps = num_inference_steps
    if steps is not None and steps > spec.max_steps:
        raise InputError("num_inference_steps", f"{steps} is over {spec.name}'s limit of {spec.max_steps}")
    if has_image:
        steps = check_steps_and_strength(spec, steps, prompt_strength)
    elif steps is None:
        steps = spec.default_steps
    guidance = spec.guidance_scale if guidance_scale is None else guidance_scale
    if guidance > 1 and spec.guidance_scale <= 1:
        log.info("guidance_scale %g: %s was distilled without guidance; the negative prompt applies now", guidance,
                 spec.name)
    return Plan(sides["width"], sides["height"], steps, guidance)
