"""The Stable Diffusion safety checker, run on finished images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPImageProcessor

# The CLIP preprocessing the production safety tar expects (it ships no preprocessor_config.json).
DEFAULT_FEATURE_EXTRACTOR = Path(__file__).resolve().parent / "feature_extractor"

log = logging.getLogger(__name__)


class NSFWError(RuntimeError):
    pass


class SafetyChecker:
    def __init__(self, directory: Path, device: str, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.model = StableDiffusionSafetyChecker.from_pretrained(directory, dtype=dtype).to(device)
        config_dir = directory if (directory / "preprocessor_config.json").is_file() else DEFAULT_FEATURE_EXTRACTOR
        self.feature_extractor = CLIPImageProcessor.from_pretrained(config_dir)

    @torch.no_grad()
    def flags(self, images: list[Image.Image]) -> list[bool]:
        """True for each image the checker flags as NSFW."""
        clip_input = self.feature_extractor(images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        arrays = [np.array(image) for image in images]
        _, has_nsfw = self.model(images=arrays, clip_input=clip_input)
        return [bool(flag) for flag in has_nsfw]

    def keep_safe(self, images: list[Image.Image]) -> list[Image.Image]:
        """The images the checker passes (flagged ones are dropped with a log line); an error if none is left."""
        flags = self.flags(images)
        for i, flagged in enumerate(flags):
            if flagged:
                log.info("NSFW content detected in image %d: it is left out", i)
        kept = [image for image, flagged in zip(images, flags) if not flagged]
        if not kept:
            raise NSFWError("NSFW content detected. Try running it again, or try a different prompt.")
        return kept
