"""Faults and limits, in process: a training that fails mid-way leaves no partial output; low disk
space during a weights download fails cleanly (no half file) or evicts; every size limit exists and
is enforced before expensive work, named in the error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from devkit.http_files import FileServer
from hostile.builders import photos_with_captions, zip_bytes

import weights.cache as cache_mod
from weights.cache import WeightsCache
from weights.sources import fetch_url
from weights.download import DownloadError

# --- a training that fails mid-way -----------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


@pytest.mark.parametrize("where", ["after-a-checkpoint", "while-writing-the-tar"])
def test_training_failing_mid_way_leaves_no_partial_output(tmp_path, private_tmp, monkeypatch, where):
    from training import TrainConfig, loop, train_model

    archive = tmp_path / "in.zip"
    archive.write_bytes(zip_bytes(photos_with_captions(2)))
    out_tar = tmp_path / "out" / "trained_model.tar"
    cfg = TrainConfig(resolution=64, max_train_steps=2, train_batch_size=1, lr_warmup_steps=0, checkpointing_steps=1,
                      seed=1, lora_rank=2)
    if where == "after-a-checkpoint":
        real_fit = loop.fit

        def fit(state, work_dir, save_checkpoint):
            def save_then_fail(*args, **kwargs):
                save_checkpoint(*args, **kwargs)
                raise RuntimeError("simulated failure after a checkpoint")

            return real_fit(state, work_dir, save_checkpoint=save_then_fail)

        monkeypatch.setattr(loop, "fit", fit)
    else:
        import tarfile

        real_add = tarfile.TarFile.add
        calls = []

        def add(self, *args, **kwargs):
            calls.append(args)
            if len(calls) % 3 == 0:
                raise OSError(28, "No space left on device (simulated)")
            return real_add(self, *args, **kwargs)

        monkeypatch.setattr(tarfile.TarFile, "add", add)
    with pytest.raises((RuntimeError, OSError), match="simulated"):
        train_model(archive, cfg, output_dir=out_tar.parent)
    assert not out_tar.exists()
    assert [p.name for p in out_tar.parent.iterdir()] == [] if out_tar.parent.exists() else True
    assert _left(private_tmp) == [], "training work folders left behind"
    # and without an output path given (train.py's way): no sdxl-weights-* folder either
    with pytest.raises((RuntimeError, OSError), match="simulated"):
        train_model(archive, cfg)
    assert _left(private_tmp) == []


def _left(tmp: Path) -> list[str]:
    return [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor")]  # torch's compile cache


# --- low disk space during a weights download -----------------------------------------------------


@pytest.fixture
def http_files():
    with FileServer() as server:
        yield server.url, server.files


def _tar_of(size: int, seed: int) -> bytes:
    import io
    import tarfile

    data = os.urandom(size) if seed < 0 else bytes([seed % 256]) * size
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("lora.safetensors")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); see the simulated test")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_low_disk_on_a_real_2mb_tmpfs(tmp_path, http_files, monkeypatch):
    monkeypatch.setattr("weights.download.time.sleep", lambda s: None)
    url, files = http_files
    files["/a.tar"] = _tar_of(700 * 1024, -1)
    files["/b.tar"] = _tar_of(700 * 1024, -1)
    files["/huge.tar"] = _tar_of(3 * 1024**2, -1)
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        cache = WeightsCache(disk / "cache")
        a = fetch_url(f"{url}/a.tar", cache)
        assert a.is_dir()
        # b fits only once a is evicted (raw 700k + extracted 700k + a's 700k > 2m)
        b = fetch_url(f"{url}/b.tar", cache)
        assert b.is_dir() and (b / "lora.safetensors").stat().st_size == 700 * 1024
        # larger than the whole disk: fails cleanly, naming the input, nothing half-written
        with pytest.raises(DownloadError, match="replicate_weights"):
            fetch_url(f"{url}/huge.tar", cache)
        assert [p.name for p in (disk / "cache").iterdir() if p.name.startswith(".")] == []
        assert all((e / "lora.safetensors").stat().st_size == 700 * 1024 for e in cache.entries())


def test_low_disk_simulated_evicts_least_recently_used_first(tmp_path, http_files, monkeypatch):
    """The same, with a fake free-space figure (where mounting is not permitted)."""
    url, files = http_files
    for name in ("a", "b", "c"):
        files[f"/{name}.tar"] = _tar_of(100 * 1024, ord(name))
    cache = WeightsCache(tmp_path / "cache", max_bytes=10**9)
    ea, eb = fetch_url(f"{url}/a.tar", cache), fetch_url(f"{url}/b.tar", cache)
    os.utime(ea.parent if ea.is_file() else ea, (1, 1))  # a is the least recently used
    capacity = 250 * 1024  # a disk with room for two entries and a half
    real = shutil.disk_usage

    def disk_usage(path):
        used = sum(cache_mod.disk_size(e) for e in cache.entries())
        return real(path)._replace(free=max(capacity - used, 0))

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", disk_usage)
    ec = fetch_url(f"{url}/c.tar", cache)
    assert ec.exists() and eb.exists() and not ea.exists()


def test_download_failing_with_enospc_leaves_no_part_file(tmp_path, http_files, monkeypatch):
    import weights.download as download

    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    url, files = http_files
    files["/a.tar"] = _tar_of(300 * 1024, 7)
    real_copy = download.shutil.copyfileobj

    def copy_until_full(src, dst, length=0):
        dst.write(src.read(1000))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(download.shutil, "copyfileobj", copy_until_full)
    cache = WeightsCache(tmp_path / "cache")
    with pytest.raises(DownloadError, match="replicate_weights.*No space left"):
        fetch_url(f"{url}/a.tar", cache)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(download.shutil, "copyfileobj", real_copy)
    assert (fetch_url(f"{url}/a.tar", cache) / "lora.safetensors").stat().st_size == 300 * 1024


# --- limits: exist, enforced before expensive work, named in the error ------------------------------


@pytest.fixture(scope="module")
def predictor():
    from predict import Predictor

    p = Predictor()
    p.setup()
    return p


@pytest.fixture
def no_generation(monkeypatch):
    import predict

    def expensive(*args, **kwargs):
        raise AssertionError("generation started: the request was not checked first")

    monkeypatch.setattr(predict, "generate", expensive)


def _predict(predictor, **overrides):
    from devkit.oracle import DEFAULTS

    return predictor.predict(**{**DEFAULTS, **overrides})


def test_prompt_limit_is_checked_before_anything(predictor, no_generation):
    with pytest.raises(ValueError, match=r"^prompt: 10001 characters is over the limit of 10000"):
        _predict(predictor, prompt="p" * 10_001)


def test_input_image_limit_is_checked_from_the_header(predictor, no_generation, tmp_path):
    from hostile.builders import png_with_size

    from sdxl.images import InputImageError

    (tmp_path / "big.png").write_bytes(png_with_size(4097, 4096))
    with pytest.raises(InputImageError, match=r"^image: 4097x4096 pixels is larger than the limit of 16777216"):
        _predict(predictor, image=tmp_path / "big.png")


@pytest.mark.parametrize("size", [{"width": 100_000}, {"height": 100_000}, {"width": 8192, "height": 8192}])
def test_output_size_has_a_maximum(predictor, no_generation, size):
    with pytest.raises(ValueError, match=r"^(width|height): .*(limit|at most)"):
        _predict(predictor, **size)


def test_refine_steps_has_a_maximum(predictor, no_generation):
    with pytest.raises(ValueError, match=r"refine_steps: .*(limit|at most)"):
        _predict(predictor, refine="base_image_refiner", refine_steps=10**9)


def test_archive_limits_exist_and_are_named():
    import preprocess.images as images
    import preprocess.intake as intake
    import weights.archive as archive

    assert intake.MAX_MEMBERS == 10_000 and intake.MAX_IMAGES == 1_000
    assert intake.MAX_MEMBER_BYTES == 256 * 1024**2 and intake.MAX_TOTAL_BYTES == 4 * 1024**3 and intake.MAX_RATIO == 100
    assert images.MAX_IMAGE_PIXELS == 80_000_000
    assert archive.MAX_MEMBERS == 10_000 and archive.MAX_UNPACKED_BYTES == 64 * 1024**3


def test_total_archive_size_limit_is_named(tmp_path, monkeypatch):
    import preprocess.intake as intake
    from preprocess import PreprocessError

    monkeypatch.setattr(intake, "MAX_TOTAL_BYTES", 300 * 1024)
    monkeypatch.setattr(intake, "MAX_RATIO", 10**9)
    archive = tmp_path / "big.tar"
    from hostile.builders import tar_bytes

    archive.write_bytes(tar_bytes([(f"{i}.png", os.urandom(100 * 1024)) for i in range(4)]))
    with pytest.raises(PreprocessError, match="MAX_TOTAL_BYTES") as err:
        intake.read_archive(archive, tmp_path / "staging")
    assert not any((tmp_path / "staging").iterdir()) or len(list((tmp_path / "staging").iterdir())) <= 3
    assert str(err.value).startswith("input_images")
