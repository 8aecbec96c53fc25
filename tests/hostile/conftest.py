"""Fixtures of the hostile-input suite: real coglet servers on 127.0.0.1 (tiny weights), a client
with async predictions, cancel and webhooks, loopback file servers, and a canary layout.

Servers get a private TMPDIR and weights cache so a test can see every file they leave behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pytest

from cogrun.serve import running_server
from devkit.api import Api
from devkit.http_files import FileServer

FAST = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 1234}


@contextlib.contextmanager
def private_server(kind: str, tmp_path_factory, name: str, **env) -> Iterator[Api]:
    """A coglet server (``predict`` or ``train``) on tiny weights with its own TMPDIR and weights cache
    (so a test can see every file it leaves behind); ``env`` adds or overrides variables."""
    root = tmp_path_factory.mktemp(name)
    tmp, cache = root / "tmp", root / "cache"
    tmp.mkdir()
    env = {**os.environ, "SDXL_WEIGHTS": "tiny", "TMPDIR": str(tmp), "SDXL_LORA_CACHE": str(cache), **env}
    with running_server(kind, env=env, timeout=300) as base_url:
        yield Api(base_url, tmp, cache, defaults=FAST)


@pytest.fixture(scope="session")
def make_private_server():
    """``with make_private_server(kind, tmp_path_factory, name, **env) as api``: see ``private_server``."""
    return private_server


@pytest.fixture(scope="module")
def predict_api(tmp_path_factory) -> Api:
    """A predict server, one per test module."""
    with private_server("predict", tmp_path_factory, "predict-server") as api:
        yield api


@pytest.fixture(scope="module")
def train_api(tmp_path_factory) -> Api:
    """A training server (/trainings), one per test module."""
    with private_server("train", tmp_path_factory, "train-server") as api:
        yield api


@pytest.fixture(scope="module")
def file_server():
    """Weights to download and webhooks to receive, one per test module."""
    with FileServer() as server:
        yield server


@pytest.fixture
def layout(tmp_path) -> Path:
    """tmp/canary (must stay empty), tmp/work (out dirs), tmp/uploads (archives)."""
    for name in ("canary", "work", "uploads"):
        (tmp_path / name).mkdir()
    return tmp_path


def listing(directory: Path) -> set[str]:
    """Every path under ``directory`` (relative), for before/after comparisons."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")} if directory.exists() else set()

