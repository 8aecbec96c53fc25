"""Hostile inputs, generated (nothing downloaded): archives, images, weights tars."""

from __future__ import annotations

import csv
import io
import pickle
import stat
import tarfile
import zipfile

import numpy as np
from PIL import Image

from fuzz.targets import _raw_zip_names, png_with_size  # noqa: F401  (re-exported for the tests)

BOMB_BYTES = 64 * 1024**2  # zeros: deflate/gzip squeeze them ~1000x


def picture(size=(96, 80), seed=0, mode="RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    rgb = Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png(size=(96, 80), seed=0) -> bytes:
    return encode(picture(size, seed))


def truncated_png(size=(96, 80), seed=0) -> bytes:
    data = png(size, seed)
    return data[: len(data) // 2]


FAKE_PNG = b"<html>this is not an image</html>\n" * 20


def caption_csv(rows) -> bytes:
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


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def zip_with_raw_name(raw_name: bytes, data: bytes) -> bytes:
    """A zip whose member name is ``raw_name`` (e.g. not UTF-8) although its UTF-8 flag is set."""
    placeholder = b"~" * len(raw_name)
    return _raw_zip_names(zip_bytes([(placeholder.decode(), data)]), {placeholder: raw_name})


def tar_bytes(entries, mode: str = "w", fmt=tarfile.GNU_FORMAT) -> bytes:
    """``entries``: (name, bytes) or TarInfo (links, fifos)."""
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


def tar_link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def photos(n: int = 3, size=(96, 80)) -> list[tuple[str, bytes]]:
    return [(f"photo{i}.png", png(size, seed=i)) for i in range(n)]


def photos_with_captions(n: int = 3, size=(96, 80)) -> list[tuple[str, bytes]]:
    """Photos plus a caption csv (so BLIP is not needed)."""
    members = photos(n, size)
    return members + [("captions.csv", caption_csv([(f"a photo of TOK number {i}", name) for i, (name, _) in enumerate(members)]))]


class _Canary:
    """Unpickling this creates the directory ``path`` (os.mkdir): proof that a pickle was loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def canary_pickle(path) -> bytes:
    return pickle.dumps({"weights": _Canary(str(path))})
