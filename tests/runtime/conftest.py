"""Fixtures of the runtime tests: a real coglet server on tiny weights, and helpers to talk to it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cogrun import REPO_ROOT
from cogrun.serve import running_server
from devkit.api import Api

TINY = {"SDXL_WEIGHTS": "tiny"}
FAST = {"width": 64, "height": 64, "num_inference_steps": 2}  # a few hundred milliseconds per image on CPU
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "cog"


@pytest.fixture(scope="module")
def predict_server() -> str:
    """Base URL of a predict server (coglet + predict.py on tiny weights), one per test module."""
    with running_server("predict", env={**os.environ, **TINY}, timeout=300) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def api(predict_server: str) -> Api:
    return Api(predict_server, defaults=FAST)


@pytest.fixture
def shared_reference() -> Path:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip("../shared/reference/cog not present beside the clone")
    return SHARED_REFERENCE


@pytest.fixture(scope="session")
def make_api():
    """``make_api(base_url)`` -> :class:`Api`, for servers a test module starts itself."""
    return lambda base_url: Api(base_url, defaults=FAST)
