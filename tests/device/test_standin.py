"""The stand-in CUDA device fails where a GPU fails (so the device layer can fail), and computes what the CPU does."""

from __future__ import annotations

import pytest
import torch

from device.standin import cpu_numbers, standin_cuda


@pytest.fixture
def standin():
    with standin_cuda():
        yield


def test_cross_device_operations_fail(standin):
    x = torch.randn(3, 4, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        _ = torch.randn(3, 4) * x.std()  # the PivotalTokens bug: a CPU tensor times a CUDA scalar
    with pytest.raises(RuntimeError, match="same device"):
        torch.nn.Linear(4, 2)(x)  # a module left on the CPU
    assert (x * torch.tensor(2.0)).device.type == "cuda"  # a 0-dim CPU scalar is allowed, as on a GPU
    with pytest.raises(TypeError, match="cuda:0 device type tensor to numpy"):
        x.numpy()


def test_generators_must_be_on_the_device_they_draw_for(standin):
    g = torch.Generator("cuda").manual_seed(0)
    assert g.device.type == "cuda"
    with pytest.raises(RuntimeError, match="generator"):
        torch.randn(2, generator=g)
    with pytest.raises(RuntimeError, match="generator"):
        torch.randn(2, device="cuda", generator=torch.Generator().manual_seed(0))


def test_cross_dtype_operations_fail(standin):
    layer = torch.nn.Linear(4, 2).to("cuda", torch.float16)
    with pytest.raises(RuntimeError, match="dtype|Half|Float"):
        layer(torch.randn(3, 4, device="cuda"))
    assert layer(torch.randn(3, 4, device="cuda").half()).dtype == torch.float16


def test_numbers_and_gradients_are_the_cpu_ones(standin):
    w_cpu = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    x_cpu = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    w = w_cpu.clone().to("cuda").requires_grad_(True)
    y = (x_cpu.to("cuda") @ w).relu().sum()
    y.backward()
    w_ref = w_cpu.clone().requires_grad_(True)
    (x_cpu @ w_ref).relu().sum().backward()
    assert torch.equal(cpu_numbers(w.grad), w_ref.grad) and w.grad.device.type == "cuda"
    assert y.cpu().item() == (x_cpu @ w_cpu).relu().sum().item()


def test_to_another_tensor_takes_its_device_and_dtype(standin):
    """``t.to(other)`` (transformers' Adafactor builds its state this way) lands where ``other`` is."""
    other = torch.randn(3, device="cuda", dtype=torch.float16)
    moved = torch.zeros(3).to(other)
    assert moved.device.type == "cuda" and moved.dtype == torch.float16
    moved.add_(other)  # no cross-device error: both are on the stand-in device
    back = other.to(torch.zeros(2))
    assert back.device.type == "cpu" and back.dtype == torch.float32
