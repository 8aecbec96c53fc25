"""Hostile inputs, generated (nothing downloaded): archives, images, weights tars."""

from __future__ import annotations

import pickle
import stat
import tarfile
import zipfile

from PIL import Image

from fuzz.targets import with_raw_zip_names, png_with_size  # noqa: F401  (re-exported for the tests)
from devkit import media
from devkit.media import caption_csv, encode, tar_bytes, zip_bytes  # noqa: F401  (re-exported)

BOMB_BYTES = 64 * 1024**2  # zeros: deflate/gzip squeeze them ~1000x


def picture(size=(96, 80), seed=0, mode="RGB") -> Image.Image:
    return media.picture(size, seed, mode)


def png(size=(96, 80), seed=0) -> bytes:
    return encode(picture(size, seed))


def truncated_png(size=(96, 80), seed=0) -> bytes:
    data = png(size, seed)
    return data[: len(data) // 2]


FAKE_PNG = b"<html>this is not an image</html>\n" * 20


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def zip_with_raw_name(raw_name: bytes, data: bytes) -> bytes:
    """A zip whose member name is ``raw_name`` (e.g. not UTF-8) although its UTF-8 flag is set."""
    placeholder = b"~" * len(raw_name)
    return with_raw_zip_names(zip_bytes([(placeholder.decode(), data)]), {placeholder: raw_name})


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
