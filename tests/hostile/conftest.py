"""Fixtures of the hostile-input suite: real coglet servers on 127.0.0.1 (tiny weights), a client
with async predictions, cancel and webhooks, loopback file servers, and a canary layout.

Servers get a private TMPDIR and weights cache so a test can see every file they leave behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cogrun.serve import running_server
from helpers.api import Api
from helpers.http_files import FileServer

FAST = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 1234}


def _server_dirs(tmp_path_factory, name: str) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp(name)
    tmp, cache = root / "tmp", root / "cache"
    tmp.mkdir()
    env = {**os.environ, "SDXL_WEIGHTS": "tiny", "TMPDIR": str(tmp), "SDXL_LORA_CACHE": str(cache)}
    return tmp, cache, env


@pytest.fixture(scope="module")
def predict_api(tmp_path_factory) -> Api:
    """A predict server (one per test module) with its own TMPDIR and weights cache."""
    tmp, cache, env = _server_dirs(tmp_path_factory, "predict-server")
    with running_server("predict", env=env, timeout=300) as base_url:
        yield Api(base_url, tmp, cache, defaults=FAST)


@pytest.fixture(scope="module")
def train_api(tmp_path_factory) -> Api:
    """A training server (/trainings) with its own TMPDIR."""
    tmp, cache, env = _server_dirs(tmp_path_factory, "train-server")
    with running_server("train", env=env, timeout=300) as base_url:
        yield Api(base_url, tmp, cache, defaults=FAST)


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

