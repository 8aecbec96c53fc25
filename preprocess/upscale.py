"""Swin2SR super-resolution for training images smaller than the target resolution."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

import weights

log = logging.getLogger(__name__)


class Upscaler:
    """Swin2SRForImageSuperResolution from the ``swin2sr`` weight set (x4 real-world in production)."""

    def __init__(self, device: str = "cpu"):
        from transformers import Swin2SRForImageSuperResolution, Swin2SRImageProcessorPil

        path = weights.resolve("swin2sr")
        log.info("loading Swin2SR from %s (%s)", path, weights.source("swin2sr"))
        self.device = torch.device(device)
        # The PIL processor needs no torchvision and reads the real repos' preprocessor_config.json.
        self.processor = Swin2SRImageProcessorPil.from_pretrained(path)
        self.model = Swin2SRForImageSuperResolution.from_pretrained(path).to(self.device).eval()
        self.scale = int(self.model.config.upscale)

    @torch.no_grad()
    def upscale(self, image: Image.Image) -> Image.Image:
        """Return ``image`` enlarged ``self.scale`` times (RGB)."""
        inputs = self.processor(image, return_tensors="pt").to(self.device)
        out = self.model(**inputs).reconstruction[0].float().clamp(0, 1).cpu().numpy()
        out = np.moveaxis(out, 0, -1)[: image.height * self.scale, : image.width * self.scale]  # drop the padding
        return Image.fromarray(np.rint(out * 255).astype(np.uint8), "RGB")

    def to_resolution(self, image: Image.Image, resolution: int) -> Image.Image:
        """Upscale a square image smaller than ``resolution`` with Swin2SR, then resize to exactly ``resolution``."""
        if image.width < resolution:
            log.info("upscaling a %dx%d image x%d with Swin2SR", image.width, image.height, self.scale)
            image = self.upscale(image)
        return resize(image, resolution)

    def close(self) -> None:
        del self.model


def resize(image: Image.Image, resolution: int) -> Image.Image:
    """Resize to ``resolution`` x ``resolution`` with Lanczos (no-op when already that size)."""
    if image.size == (resolution, resolution):
        return image
    return image.resize((resolution, resolution), Image.Resampling.LANCZOS)
