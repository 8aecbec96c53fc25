"""Weight sets: tiny generation, the production sources (URL tar, Hugging Face cache, local dir), safe extraction, cache."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from devkit.http_files import FileServer

import weights
from weights import sets
from weights.archive import extract_tar
from weights.errors import ArchiveError, DownloadError
from weights.cache import WeightsCache
from weights.sources import fetch_url
from weights.tiny_sdxl import make_base

REPO = Path(__file__).resolve().parents[2]


def _tar_bytes(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(directory.rglob("*")):
            tar.add(f, arcname=str(f.relative_to(directory)), recursive=False)
    return buf.getvalue()


def _digest(directory: Path) -> dict[str, str]:
    return {str(f.relative_to(directory)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(directory.rglob("*")) if f.is_file()}


def test_tiny_base_generation_is_deterministic(tmp_path):
    make_base(tmp_path / "a")
    make_base(tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert (tmp_path / "a" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()


def test_python_m_weights_lists_every_set_with_source_and_directory():
    env = {**os.environ, "SDXL_WEIGHTS": "tiny"}
    out = subprocess.run([sys.executable, "-m", "weights"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    for name in ("sdxl-base", "sdxl-refiner", "safety-checker", "blip", "clipseg", "swin2sr"):
        assert name in out.stdout
    assert out.stdout.count("(present)") == len(weights.WEIGHT_SETS)


def test_production_sources_are_the_reference_tars_and_hf_repos(monkeypatch):
    monkeypatch.delenv("SDXL_WEIGHTS")
    assert weights.source("sdxl-base") == "https://weights.replicate.delivery/default/sdxl/sdxl-vae-upcast-fix.tar"
    assert weights.local_dir("sdxl-base").name == "sdxl-base"
    monkeypatch.setenv("SDXL_WEIGHTS", "huggingface")
    assert weights.source("sdxl-base") == (
        "huggingface stabilityai/stable-diffusion-xl-base-1.0 + vae from madebyollin/sdxl-vae-fp16-fix"
    )


def test_url_tar_is_downloaded_once_and_loads(monkeypatch, tmp_path):
    tiny = weights.resolve("sdxl-refiner")
    server = FileServer({"/refiner.tar": _tar_bytes(tiny)})
    try:
        monkeypatch.setenv("SDXL_WEIGHTS", "replicate")
        monkeypatch.setenv("SDXL_WEIGHTS_DIR", str(tmp_path))
        ws = dataclasses.replace(sets.WEIGHT_SETS["sdxl-refiner"], url=server.url + "/refiner.tar")
        monkeypatch.setitem(sets.WEIGHT_SETS, "sdxl-refiner", ws)
        got = weights.resolve("sdxl-refiner")
        assert got == tmp_path / "sdxl-refiner" and _digest(got) == _digest(tiny)
        assert weights.resolve("sdxl-refiner") == got
        assert server.requests == ["/refiner.tar"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sdxl-refiner"]  # no temp files left
    finally:
        server.close()


def test_failed_download_leaves_nothing(monkeypatch, tmp_path):
    server = FileServer({}, fail=True)
    try:
        monkeypatch.setenv("SDXL_WEIGHTS", "replicate")
        monkeypatch.setenv("SDXL_WEIGHTS_DIR", str(tmp_path))
        ws = dataclasses.replace(sets.WEIGHT_SETS["safety-checker"], url=server.url + "/safety.tar")
        monkeypatch.setitem(sets.WEIGHT_SETS, "safety-checker", ws)
        monkeypatch.setattr("weights.download.time.sleep", lambda s: None)
        with pytest.raises(DownloadError, match="safety-checker: could not download"):
            weights.resolve("safety-checker")
        assert list(tmp_path.iterdir()) == []
    finally:
        server.close()


def test_huggingface_cache_layout_with_fp16_fix_vae_overlay(monkeypatch, tmp_path):
    """A Hugging Face cache (as huggingface_hub writes it) is read offline; the VAE comes from the fp16-fix repo."""
    tiny = weights.resolve("sdxl-base")
    hub = tmp_path / "hub"
    for repo, src in (("stabilityai/stable-diffusion-xl-base-1.0", tiny), ("madebyollin/sdxl-vae-fp16-fix", tiny / "vae")):
        root = hub / ("models--" + repo.replace("/", "--"))
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text("0" * 40)
        shutil.copytree(src, root / "snapshots" / ("0" * 40))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SDXL_WEIGHTS", "huggingface")
    monkeypatch.setenv("SDXL_WEIGHTS_DIR", str(tmp_path / "w"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    got = weights.resolve("sdxl-base")
    assert (got / "vae").resolve() == (hub / "models--madebyollin--sdxl-vae-fp16-fix" / "snapshots" / ("0" * 40)).resolve()
    from sdxl.models import load_base

    pipe = load_base(got, "cpu", __import__("torch").float32)
    assert pipe.vae.config.force_upcast is False


def test_local_directory_source(monkeypatch, tmp_path):
    shutil.copytree(weights.resolve("safety-checker"), tmp_path / "safety-checker")
    monkeypatch.setenv("SDXL_WEIGHTS", str(tmp_path))
    assert weights.resolve("safety-checker") == tmp_path / "safety-checker"
    with pytest.raises(FileNotFoundError, match="sdxl-base"):
        weights.resolve("sdxl-base")


def _evil_tar(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("ok.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
        if kind == "dotdot":
            info = tarfile.TarInfo("../evil.txt")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        elif kind == "absolute":
            info = tarfile.TarInfo("/tmp/evil-absolute.txt")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        elif kind == "symlink":
            info = tarfile.TarInfo("link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "hardlink":
            info = tarfile.TarInfo("hard")
            info.type, info.linkname = tarfile.LNKTYPE, "../../etc/passwd"
            tar.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "symlink", "hardlink"])
def test_unsafe_tar_members_are_refused_and_nothing_is_left(tmp_path, kind):
    dest = tmp_path / "out" / "entry"
    with pytest.raises(ArchiveError, match="unsafe member"):
        extract_tar(_evil_tar(tmp_path / "evil.tar", kind), dest)
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_absolute_member_stays_inside(tmp_path):
    """tarfile's data filter strips the leading slash: the member lands inside the destination."""
    dest = extract_tar(_evil_tar(tmp_path / "abs.tar", "absolute"), tmp_path / "out")
    assert (dest / "tmp" / "evil-absolute.txt").is_file()
    assert not Path("/tmp/evil-absolute.txt").exists()


def test_weights_cache_fetches_once_and_evicts_least_recently_used(tmp_path):
    payload = {f"/w{i}.bin": bytes([65 + i]) * 1000 for i in range(3)}
    server = FileServer(payload)
    try:
        cache = WeightsCache(tmp_path / "cache", max_bytes=2500)
        a = fetch_url(server.url + "/w0.bin", cache)
        assert a.read_bytes() == payload["/w0.bin"]
        assert fetch_url(server.url + "/w0.bin", cache) == a
        assert server.requests == ["/w0.bin"]  # the second fetch made no network call
        fetch_url(server.url + "/w1.bin", cache)
        os.utime(a.parent, (1, 1))  # w0 is now the least recently used
        fetch_url(server.url + "/w2.bin", cache)
        left = {p.read_bytes()[:1] for e in cache.entries() for p in e.iterdir()}
        assert left == {b"B", b"C"}
    finally:
        server.close()


def test_weights_cache_failed_download_leaves_no_entry(tmp_path, monkeypatch):
    server = FileServer({}, fail=True)
    monkeypatch.setattr("weights.download.time.sleep", lambda s: None)
    try:
        cache = WeightsCache(tmp_path / "cache")
        with pytest.raises(DownloadError, match="replicate_weights: could not download"):
            fetch_url(server.url + "/x.tar", cache)
        assert list((tmp_path / "cache").iterdir()) == []
        assert len(server.requests) == 3  # retried
    finally:
        server.close()
