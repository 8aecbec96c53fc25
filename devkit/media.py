"""Test inputs generated on the fly: pictures, encoded images, caption csvs, archives (nothing downloaded)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
import tarfile
import zipfile

import numpy as np
from PIL import Image


def picture(size=(64, 48), seed=0, mode="RGB") -> Image.Image:
    """A deterministic noisy picture of ``size`` (width, height)."""
    rng = np.random.RandomState(seed)
    rgb = Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def caption_csv(rows) -> bytes:
    """The reference trainer's caption csv: columns caption,image_file."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["caption", "image_file"])
    writer.writerows(rows)
    return buf.getvalue().encode()


def zip_bytes(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """``entries``: (name or ZipInfo, bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def tar_bytes(entries, mode: str = "w", fmt=tarfile.GNU_FORMAT) -> bytes:
    """``entries``: (name, bytes) or TarInfo (links, fifos); names may hold surrogate-escaped bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tf.addfile(info, io.BytesIO(entry[1]))
    return buf.getvalue()


def make_prepared(root: Path, n: int = 2, resolution: int = 64, caption: str = "a photo of TOK, a man",
                  full_masks: bool = False) -> Path:
    """A directory as preprocess.prepare writes it: images/NNNN.png, masks/NNNN.png, captions.csv
    (captions ``f"{caption} {i}"``). Smooth, distinct pictures: colour gradients with a disc in the
    middle; masks the centre square, or everything with ``full_masks``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    rows = []
    for i in range(n):
        disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < (0.15 + 0.05 * i) ** 2
        img = np.stack([xx * 255, yy * 255, np.full_like(xx, 60 * i)], axis=-1)
        img[disc] = [230, 40 * i, 90]
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{i:04d}.png")
        mask = np.full((resolution, resolution), 255 if full_masks else 0, np.uint8)
        q = resolution // 4
        mask[q : resolution - q, q : resolution - q] = 255
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i:04d}.png")
        rows.append({"image": f"images/{i:04d}.png", "mask": f"masks/{i:04d}.png", "caption": f"{caption} {i}"})
    with open(root / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "mask", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def init_image_and_mask(directory: Path, square: bool = True) -> dict[str, Path]:
    """A 64x64 init image (a gradient, with a red square when ``square``) and an inpaint mask (white square =
    repaint) as PNG files in ``directory``: the inputs of the img2img / inpaint tests."""
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    if square:
        rgb[20:44, 20:44] = (250, 40, 40)
    Image.fromarray(rgb).save(directory / "image.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(directory / "mask.png")
    return {"image": directory / "image.png", "mask": directory / "mask.png"}
