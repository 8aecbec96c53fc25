"""Decoding staged image files into upright 8-bit RGB PIL images."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PreprocessError

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 80_000_000  # ~ a 10000 x 8000 photo; larger headers are refused as pixel bombs
_BACKGROUND = (255, 255, 255)  # transparent areas become white


def load_image_or_none(path: Path, name: str) -> Image.Image | None:
    """Decode ``path`` (member ``name``) to upright RGB; ``None`` (logged) when it is not a usable image.

    Raises PreprocessError for images over MAX_IMAGE_PIXELS, checked from the header before decoding.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(name, im.size)
                im.load()
                image = _upright(im, name)
    except PreprocessError:
        raise
    except Image.DecompressionBombError as e:
        raise PreprocessError(_pixel_bomb(name, None)) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        log.warning("input_images: skipping %s: not a readable image (%s)", name, e)
        return None
    return to_rgb(image)


def _check_pixels(name: str, size: tuple[int, int]) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise OSError(f"bad size {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise PreprocessError(_pixel_bomb(name, size))


def _pixel_bomb(name: str, size: tuple[int, int] | None) -> str:
    dims = f"{size[0]}x{size[1]} pixels" if size else "too large"
    return f"input_images: {name} is {dims}; at most {MAX_IMAGE_PIXELS} pixels (MAX_IMAGE_PIXELS) are accepted"


def _upright(im: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is logged and ignored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for malformed EXIF
        log.warning("input_images: %s: ignoring unreadable EXIF orientation (%s)", name, e)
        return im.copy()


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode (RGBA, LA, P, CMYK, 16-bit, float, 1-bit, ...) to 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(_to_8bit(np.asarray(im), im.mode)).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit integer or float greyscale samples to uint8."""
    values = values.astype(np.float64)
    if mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    elif mode.startswith("I;16") or (values.size and values.max() > 255):
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
