"""train.train() end to end: a zip of photos -> real preprocess -> training -> a tar the predictor applies."""

from __future__ import annotations

import inspect
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import train as train_module


def documented_defaults() -> dict:
    return {n: p.default.default for n, p in inspect.signature(train_module.train).parameters.items()}


@pytest.fixture(scope="module")
def photos_zip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    path = folder / "photos"  # no extension: detected by content
    with zipfile.ZipFile(path, "w") as z:
        for i in range(3):
            img = np.clip(rng.normal(128, 40, (80, 96, 3)), 0, 255).astype(np.uint8)
            img[20:60, 30:70] = [200, 50 * i, 30]
            Image.fromarray(img).save(folder / f"p{i}.jpg")
            z.write(folder / f"p{i}.jpg", f"nested/dir/p{i}.jpg")
    return path


@pytest.fixture(scope="module")
def trained_tar(photos_zip, tmp_path_factory) -> tuple[Path, list[str]]:
    args = documented_defaults()
    args.update(input_images=photos_zip, resolution=64, train_batch_size=2, max_train_steps=4, lora_rank=4,
                lora_lr=1e-2, ti_lr=1e-2, lr_warmup_steps=0, checkpointing_steps=2, verbose=False)
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    logger = logging.getLogger("training")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        out = train_module.train(**args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert isinstance(out, train_module.TrainingOutput)
    kept = tmp_path_factory.mktemp("kept")
    for name in ("weights", "checkpoints", "dataset"):
        (kept / f"{name}.tar").write_bytes(Path(getattr(out, name)).read_bytes())
    assert len(out.validation_images) == 2
    shutil.rmtree(Path(out.weights).parent)  # train() wrote them into a fresh temporary directory
    return kept / "weights.tar", records


def test_train_writes_the_reference_tar(trained_tar):
    tar_path, records = trained_tar
    with tarfile.open(tar_path) as tar:
        assert {"lora.safetensors", "embeddings.pti", "special_params.json"} <= set(tar.getnames())
    with tarfile.open(tar_path.with_name("checkpoints.tar")) as tar:
        assert "checkpoints/checkpoint-2/lora.safetensors" in tar.getnames()
    with tarfile.open(tar_path.with_name("dataset.tar")) as tar:
        assert {"dataset/captions.csv", "dataset/images/0000.png", "dataset/masks/0002.png"} <= set(tar.getnames())
    assert any(r.startswith("seed ") and "random" in r for r in records), records  # seed empty -> random, logged


def test_the_predictor_applies_the_tar(trained_tar, tmp_path):
    """Our predictor's reference-format loader takes the tar and "a photo of TOK" changes."""
    from sdxl.finetune import FineTunes
    from sdxl.models import load_base

    import weights

    tar_path, _ = trained_tar
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "w", filter="data")
    pipe = load_base(weights.resolve("sdxl-base"), "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    finetunes = FineTunes(SimpleNamespace(base=pipe))

    def draw(prompt):
        return pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    before = draw("a photo of TOK")
    finetunes.apply(finetunes.read(tmp_path / "w", input_name="weights", source=str(tar_path)))
    prompt = finetunes.rewrite_prompt("a photo of TOK")
    assert prompt == "a photo of <s0><s1>"
    after = draw(prompt)
    assert np.abs(after - before).max() > 1e-3


def test_a_bad_archive_fails_cleanly(tmp_path, monkeypatch):
    import tempfile

    from preprocess import PreprocessError

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where train() puts its work and output
    bogus = tmp_path / "photos.zip"
    bogus.write_bytes(b"this is not an archive at all" * 10)
    args = documented_defaults()
    args.update(input_images=bogus, resolution=64, max_train_steps=1)
    with pytest.raises(PreprocessError):
        train_module.train(**args)
    assert list(scratch.iterdir()) == []  # no work directory, no half-written tar
