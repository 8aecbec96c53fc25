"""Input images in, output files out: decoding with clear errors, and saving in the asked format."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_INPUT_PIXELS = 4096 * 4096  # decoding anything larger is refused before it is decoded
MIN_INPUT_SIDE = 8  # the VAE works on multiples of 8: smaller sides would round to nothing
OUTPUT_FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}


class InputImageError(ValueError):
    pass


def load_image_or_refuse(path: Path, *, name: str, mode: str = "RGB") -> Image.Image:
    """Decode the input ``name`` (e.g. "image", "mask") fully, upright (EXIF), in ``mode``; an unusable
    image is refused with an InputImageError naming the input (a request has no image to skip)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_INPUT_PIXELS:
                    raise InputImageError(
                        f"{name}: {img.width}x{img.height} pixels is larger than the limit of "
                        f"{MAX_INPUT_PIXELS} pixels (4096x4096)"
                    )
                if min(img.size) < MIN_INPUT_SIDE:
                    raise InputImageError(
                        f"{name}: {img.width}x{img.height} pixels is too small; use at least "
                        f"{MIN_INPUT_SIDE}x{MIN_INPUT_SIDE}"
                    )
                img.seek(0)  # first frame of an animation
                img.load()
                upright = ImageOps.exif_transpose(img)
                if upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
                    # composite transparency onto white rather than letting it turn black
                    rgba = upright.convert("RGBA")
                    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    upright = Image.alpha_composite(canvas, rgba)
                elif upright.mode.startswith("I;16") or upright.mode == "I":
                    upright = upright.point(lambda v: v / 256).convert("L")
                return upright.convert(mode)
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputImageError(f"{name}: the image is larger than the limit of {MAX_INPUT_PIXELS} pixels (4096x4096) ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        detail = str(e).replace(str(path), "the upload")  # the server's temporary path is nobody's business
        raise InputImageError(f"{name}: the file could not be read as an image ({type(e).__name__}: {detail})") from e



def load_request_images(image: Path | None, mask: Path | None) -> tuple[Image.Image | None, Image.Image | None]:
    """A request's init image (RGB) and inpaint mask (L), each decoded and checked when given."""
    return (load_image_or_refuse(image, name="image") if image is not None else None,
            load_image_or_refuse(mask, name="mask", mode="L") if mask is not None else None)

def save_images(images: list[Image.Image], out_dir: Path, output_format: str, output_quality: int) -> list[Path]:
    fmt = OUTPUT_FORMATS[output_format]
    paths = []
    for i, image in enumerate(images):
        path = out_dir / f"out-{i}.{output_format}"
        if fmt == "PNG":
            image.save(path, fmt)
        else:
            image.save(path, fmt, quality=output_quality)
        paths.append(path)
    return paths


class OutputFolder:
    """A fresh folder for each prediction's images; the previous prediction's folder is removed then (its files
    have been delivered by the time the next prediction runs), so outputs do not pile up."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.current: Path | None = None

    def save(self, images: list[Image.Image], output_format: str, output_quality: int) -> list[Path]:
        if self.current is not None:
            shutil.rmtree(self.current, ignore_errors=True)
        self.current = Path(tempfile.mkdtemp(prefix=self.prefix))
        return save_images(images, self.current, output_format, output_quality)
