"""Square crops centred on a mask's centre of mass (or on the image centre)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def center_of_mass(mask: Image.Image) -> tuple[float, float]:
    """The (x, y) centre of mass of ``mask`` above its minimum; the image centre for a uniform mask."""
    weights = np.asarray(mask, dtype=np.float64)
    weights = weights - weights.min()
    total = weights.sum()
    if total <= 0:
        return mask.width / 2, mask.height / 2
    ys, xs = np.indices(weights.shape)
    return float((xs * weights).sum() / total), float((ys * weights).sum() / total)


def square_box(size: tuple[int, int], center: tuple[float, float]) -> tuple[int, int, int, int]:
    """The largest square (left, top, right, bottom) inside ``size`` centred on ``center`` as far as it fits."""
    width, height = size
    side = min(width, height)
    left = int(round(min(max(center[0] - side / 2, 0), width - side)))
    top = int(round(min(max(center[1] - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def crop_box(image: Image.Image, mask: Image.Image, *, salience: bool) -> tuple[int, int, int, int]:
    """The square both are cropped to: on the mask's centre of mass if ``salience``, else centred."""
    center = center_of_mass(mask) if salience else (image.width / 2, image.height / 2)
    return square_box(image.size, center)


def crop_pair(
    image: Image.Image, mask: Image.Image, *, salience: bool
) -> tuple[Image.Image, Image.Image]:
    """Crop image and mask to the same square (``crop_box``)."""
    box = crop_box(image, mask, salience=salience)
    return image.crop(box), mask.crop(box)


def shrink(image: Image.Image, shorter_side: int) -> Image.Image:
    """Downscale so the shorter side is ``shorter_side`` (never upscales)."""
    scale = shorter_side / min(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
