"""Test inputs generated on the fly: pictures, encoded images, caption csvs, archives (nothing downloaded)."""

from __future__ import annotations

import csv
import io
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
