"""Shared fixtures for the preprocessing tests: tiny weights, archive and image builders."""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import pytest
from devkit.media import caption_csv, encode, picture, tar_bytes, zip_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]
ZEKE = REPO_ROOT / ".." / "shared" / "datasets" / "zeke"
ZEKE_SKIP = "../shared/datasets/zeke not present: real photos are only available beside the clone in CI"


@pytest.fixture(autouse=True)
def tiny_weights(monkeypatch):
    """Every test here uses the tiny generated BLIP/CLIPSeg/Swin2SR (cached in SDXL_TINY_DIR)."""
    monkeypatch.setenv("SDXL_WEIGHTS", "tiny")


def png(size=(64, 48), seed=0) -> bytes:
    return encode(picture(size, seed))


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.write_bytes(zip_bytes(members.items()))
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    path.write_bytes(tar_bytes(members.items(), mode, fmt=tarfile.DEFAULT_FORMAT))
    return path


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "captions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def zeke() -> Path:
    if not ZEKE.is_dir():
        pytest.skip(ZEKE_SKIP)
    return ZEKE.resolve()


@pytest.fixture
def kit():
    """The builders above, for test modules (conftest is not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        picture=picture,
        encode=encode,
        png=png,
        caption_csv=caption_csv,
        make_zip=make_zip,
        make_tar=make_tar,
        read_rows=read_rows,
    )
