"""Fixtures of the interop tests: one tiny training (its tar, its files, the pre-interop reference
files of the same state), a set-up predictor, the plain diffusers oracle."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from devkit.media import make_prepared

RES = 64
PLAIN = dict(prompt="a photo of a dog")  # no trigger word: only a LoRA changes this image


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny LoRA training: its tar (as train_on_prepared writes it), the extracted files, and the
    reference files the pre-interop writer makes from the same state."""
    from interop.reference_export import save_weights as reference_save_weights

    from training import TrainConfig, export, loop

    root = tmp_path_factory.mktemp("trained")
    prepared = make_prepared(root / "prepared", resolution=RES, caption="a photo of TOK", full_masks=True)
    cfg = TrainConfig(seed=0, resolution=RES, train_batch_size=2, max_train_steps=4, lora_rank=4, lr_warmup_steps=0,
                      checkpointing_steps=1000, verbose=False, lora_lr=1e-2, ti_lr=1e-2).validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = loop.setup(cfg, prepared)
        loop.fit(state, root / "work", save_checkpoint=export.save_weights)
    finally:
        torch.set_num_threads(threads)
    work = root / "work" / "weights"
    export.save_weights(work, state)
    tar = export.write_tar(work, root / "trained_model.tar")
    files = root / "files"
    with tarfile.open(tar) as t:
        t.extractall(files, filter="data")
    reference = reference_save_weights(root / "reference", state)
    return SimpleNamespace(tar=tar, files=files, reference=reference, cfg=cfg,
                           rank=cfg.lora_rank, tokens=state.tokens.names)


@pytest.fixture(scope="session")
def base_image(run):
    return run(**PLAIN)[0]


@pytest.fixture(scope="session")
def oracle():
    from devkit.oracle import Oracle

    return Oracle(watermark=True)


@pytest.fixture
def single(tmp_path):
    """Copy one file to a name that says nothing about its content (detection must not use names)."""

    def _single(src: Path, name: str = "weights") -> Path:
        dst = tmp_path / name
        shutil.copyfile(src, dst)
        return dst

    return _single
