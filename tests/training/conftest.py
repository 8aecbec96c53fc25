"""Fixtures of the trainer tests: prepared dataset directories (the preprocess output layout), configs, a fixed evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devkit.media import make_prepared

from training import TrainConfig

RES = 64


def small_config(**overrides) -> TrainConfig:
    """Tiny-model settings: resolution 64, rank 4, a few steps, no warmup, lrs that make tiny models move."""
    settings = dict(seed=0, resolution=RES, train_batch_size=2, max_train_steps=4, lora_rank=4,
                    lr_warmup_steps=0, checkpointing_steps=1000, verbose=False,
                    lora_lr=1e-3, ti_lr=1e-2, unet_learning_rate=1e-4)
    settings.update(overrides)
    return TrainConfig(**settings)


def fixed_eval_loss(state) -> float:
    """The masked loss of every example at fixed noise and fixed timesteps (no randomness left)."""
    from training import loop

    g = torch.Generator().manual_seed(1234)
    n = len(state.data)
    losses = []
    with torch.no_grad():
        for t in (100, 300, 500, 700, 900):
            noise = torch.randn((n, *state.data.latents.shape[1:]), generator=g)
            losses.append(loop.loss_on(state, torch.arange(n), noise, torch.full((n,), t)).item())
    return sum(losses) / len(losses)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def base_dir() -> Path:
    import weights

    return weights.resolve("sdxl-base")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(name="small_config", scope="session")
def small_config_fixture():
    return small_config


@pytest.fixture(name="fixed_eval_loss", scope="session")
def fixed_eval_loss_fixture():
    return fixed_eval_loss
