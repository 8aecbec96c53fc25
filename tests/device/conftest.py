"""The device layer: the product's CUDA branches, run on the real GPU when there is one (scripts/gpu-check.sh)
and on a stand-in CUDA device everywhere else (standin.py), so CI catches cross-device and cross-dtype bugs."""

from __future__ import annotations

import pytest
import torch

import weights


@pytest.fixture
def cuda():
    """Inside the test: CUDA present (the real one, or the stand-in)."""
    from device.standin import cuda_device

    with cuda_device():
        yield torch.device("cuda")


@pytest.fixture(scope="session")
def base_dir():
    return weights.resolve("sdxl-base")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine, spinning intra-op threads make runs slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
