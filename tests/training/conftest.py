"""Fixtures of the trainer tests: prepared dataset directories (the preprocess output layout), configs, a fixed evaluation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import TrainConfig

RES = 64


def make_prepared(root: Path, n: int = 2, resolution: int = RES, caption: str = "a photo of TOK, a man") -> Path:
    """A directory as preprocess.prepare writes it: images/NNNN.png, masks/NNNN.png, captions.csv."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    rows = []
    for i in range(n):  # smooth, distinct pictures: colour gradients with a disc in the middle
        disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < (0.15 + 0.05 * i) ** 2
        img = np.stack([xx * 255, yy * 255, np.full_like(xx, 60 * i)], axis=-1)
        img[disc] = [230, 40 * i, 90]
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{i:04d}.png")
        mask = np.zeros((resolution, resolution), np.uint8)
        q = resolution // 4
        mask[q : resolution - q, q : resolution - q] = 255
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i:04d}.png")
        rows.append({"image": f"images/{i:04d}.png", "mask": f"masks/{i:04d}.png", "caption": f"{caption} {i}"})
    with open(root / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "mask", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return root


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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine, spinning intra-op threads make runs 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(name="small_config", scope="session")
def small_config_fixture():
    return small_config


@pytest.fixture(name="fixed_eval_loss", scope="session")
def fixed_eval_loss_fixture():
    return fixed_eval_loss
