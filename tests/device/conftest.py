"""The device layer: the product's CUDA branches, run on the real GPU when there is one (scripts/gpu-check.sh)
and on a stand-in CUDA device everywhere else (standin.py), so CI catches cross-device and cross-dtype bugs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import weights

if importlib.util.find_spec("cog") is None:  # the GPU check machine has no Cog runtime: predict.py gets a stub
    sys.path.insert(0, str(Path(__file__).resolve().parent / "cog_stub"))


@pytest.fixture
def cuda():
    """Inside the test: CUDA present (the real one, or the stand-in)."""
    from device.standin import cuda_device

    with cuda_device():
        yield torch.device("cuda")


@pytest.fixture(scope="session")
def base_dir():
    return weights.resolve("sdxl-base")


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """accelerate's state is a process-wide singleton fixed by the first Accelerator (its device and mixed
    precision): each test here makes its own, and leaves none behind for other tests in the worker."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
