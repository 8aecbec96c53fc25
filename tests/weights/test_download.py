"""The downloader and the weights cache against loopback HTTP servers: range requests, resume after a
dropped connection, failures and cancellation leaving nothing, no network on a cache hit, LRU eviction
before downloading, one download for concurrent requests, pget kept, room made before extracting."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

import weights.cache as cache_mod
import weights.download as dl
from weights.archive import extract_tar
from weights.errors import ArchiveError, DownloadError
from weights.cache import WeightsCache
from weights.sources import fetch_url
from weights.download import download
from devkit.http_files import FileServer

KiB, MiB = 1024, 1024**2


@pytest.fixture
def serve():
    """``serve(files, ranges=True)``: a FileServer, closed after the test."""
    servers: list[FileServer] = []

    def make(files, ranges: bool = True) -> FileServer:
        servers.append(FileServer(files, ranges=ranges))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """No pget from the host, no backoff sleeps, short socket timeouts: every test stays fast."""
    monkeypatch.setattr(dl.shutil, "which", lambda name, *a, **k: None if name == "pget" else shutil.which(name))
    monkeypatch.setattr(dl, "_backoff", lambda attempt, stop: None)
    monkeypatch.setenv("SDXL_DOWNLOAD_STALL_SECONDS", "5")
    monkeypatch.delenv("SDXL_DOWNLOAD_CONNECTIONS", raising=False)


def _left(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- range requests ---------------------------------------------------------------------------------


def test_range_requests_over_several_connections_when_the_server_supports_them(serve, tmp_path):
    data = os.urandom(3 * MiB + 12345)
    server = serve({"/big.bin": data})
    server.delay = 0.05  # so the connections overlap
    seen = []
    got = download(server.url + "/big.bin", tmp_path / "big.bin", chunk_size=256 * KiB,
                   progress=lambda done, total: seen.append((done, total)))
    assert got.read_bytes() == data
    gets = server.gets()
    assert len(gets) == -(-len(data) // (256 * KiB)) == 13  # one ranged GET per chunk, none repeated
    assert all(r[2] and r[2].startswith("bytes=") for r in gets)
    starts = sorted(int(re.match(r"bytes=(\d+)-", r[2])[1]) for r in gets)
    assert starts == list(range(0, len(data), 256 * KiB))
    assert 2 <= server.peak <= dl.CONNECTIONS + 1  # parallel, at most the 4 connections (+1: see below)
    assert seen and seen[-1] == (len(data), len(data))
    assert _left(tmp_path) == ["big.bin"]  # the temp file was renamed, nothing else


def test_connections_come_from_the_environment(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("SDXL_DOWNLOAD_CONNECTIONS", "2")
    data = os.urandom(2 * MiB)
    server = serve({"/f": data})
    server.delay = 0.05
    assert download(server.url + "/f", tmp_path / "f", chunk_size=128 * KiB).read_bytes() == data
    # the server counts a request as active until its handler returns, a moment after the client has
    # its bytes and may have sent the next one: under load that overlap shows as one extra
    assert len(server.gets()) == 16 and 2 <= server.peak <= 3


def test_a_plain_get_when_the_server_has_no_range_support(serve, tmp_path):
    data = os.urandom(3 * MiB)
    server = serve({"/plain.bin": data}, ranges=False)
    got = download(server.url + "/plain.bin", tmp_path / "plain.bin", chunk_size=256 * KiB)
    assert got.read_bytes() == data
    assert len(server.gets()) == 1  # one request, read as a single stream
    assert _left(tmp_path) == ["plain.bin"]


def test_an_empty_file_is_downloaded(serve, tmp_path):
    server = serve({"/empty": b""})
    assert download(server.url + "/empty", tmp_path / "empty").read_bytes() == b""


# --- faults -------------------------------------------------------------------------------------------


def test_a_connection_dropped_mid_file_is_resumed_with_a_range_request(serve, tmp_path):
    data = os.urandom(1 * MiB)
    server = serve({"/w.bin": data})
    server.drop["/w.bin"] = (300_000, 1)  # the first answer stops after 300000 bytes
    got = download(server.url + "/w.bin", tmp_path / "w.bin")
    assert got.read_bytes() == data
    assert [r[2] for r in server.gets()] == [f"bytes=0-{dl.MIN_CHUNK - 1}", f"bytes=300000-{len(data) - 1}"]


def test_dropped_connections_in_several_chunks_are_resumed(serve, tmp_path):
    data = os.urandom(2 * MiB)
    server = serve({"/w.bin": data})
    server.drop["/w.bin"] = (10_000, 5)  # the first five answers (any chunk) are cut
    assert download(server.url + "/w.bin", tmp_path / "w.bin", chunk_size=256 * KiB).read_bytes() == data
    assert len(server.gets()) == 8 + 5


def test_a_dropped_plain_download_starts_again(serve, tmp_path):
    data = os.urandom(1 * MiB)
    server = serve({"/w.bin": data}, ranges=False)
    server.drop["/w.bin"] = (300_000, 2)
    assert download(server.url + "/w.bin", tmp_path / "w.bin").read_bytes() == data
    assert len(server.gets()) == 3


def test_a_server_that_always_fails_leaves_no_entry_and_no_temp_file(serve, tmp_path):
    server = serve({"/x.tar": b"x" * 1000})
    server.fail = FileServer.ALWAYS
    cache = WeightsCache(tmp_path / "cache")
    with pytest.raises(DownloadError, match=r"^replicate_weights: could not download .*/x\.tar: HTTP 500"):
        fetch_url(server.url + "/x.tar", cache)
    assert len(server.gets()) == dl.RETRIES
    assert _left(tmp_path / "cache") == []
    assert cache.entries() == []


def test_a_file_always_cut_short_fails_with_the_sizes_and_leaves_nothing(serve, tmp_path):
    data = os.urandom(200_000)
    for ranges in (True, False):
        server = serve({"/cut": data}, ranges=ranges)
        server.drop["/cut"] = (0 if ranges else 150_000, 100)
        with pytest.raises(DownloadError, match=r"^lora: could not download .*(closed after|got 150000 of 200000)"):
            download(server.url + "/cut", tmp_path / "d" / "cut", input_name="lora")
        assert len(server.gets()) == dl.RETRIES
        assert _left(tmp_path / "d") == []


def test_a_missing_file_is_not_retried(serve, tmp_path):
    server = serve({})
    with pytest.raises(DownloadError, match="replicate_weights: could not download .*HTTP 404"):
        fetch_url(server.url + "/missing.safetensors", WeightsCache(tmp_path / "cache"))
    assert len(server.gets()) == 1
    assert _left(tmp_path / "cache") == []


# --- cancellation ---------------------------------------------------------------------------------------


class Cancelled(BaseException):
    """Like cog's CancelationException: a BaseException, raised in the predicting thread."""


@pytest.mark.parametrize("ranges", [True, False])
def test_a_cancelled_download_leaves_nothing_even_while_the_server_stalls(serve, tmp_path, ranges, monkeypatch):
    monkeypatch.setattr(dl, "MIN_CHUNK", 256 * KiB)  # several connections, all stalled
    data = os.urandom(2 * MiB)
    server = serve({"/slow.tar": data}, ranges=ranges)
    server.stall["/slow.tar"] = 100_000  # every answer sends 100000 bytes, then hangs

    def progress(done, total):
        if done >= 100_000:
            raise Cancelled()

    cache = WeightsCache(tmp_path / "cache")
    with pytest.raises(Cancelled):  # returns while the stalled answers still hang: it never waits on them
        fetch_url(server.url + "/slow.tar", cache, progress=progress, input_name="replicate_weights")
    assert not server.release.is_set()
    assert 1 <= len(server.gets()) <= (dl.CONNECTIONS if ranges else 1)  # stopped workers ask for nothing more
    assert _left(tmp_path / "cache") == []
    server.release.set()  # the stalled answers end; the stopped workers must not recreate anything
    time.sleep(0.3)
    assert _left(tmp_path / "cache") == []
    # and the same URL works afterwards
    del server.stall["/slow.tar"]
    assert (fetch_url(server.url + "/slow.tar", cache)).read_bytes() == data


# --- the cache ------------------------------------------------------------------------------------------


def test_the_second_request_for_a_cached_url_makes_no_network_call(serve, tmp_path):
    data = os.urandom(300_000)
    server = serve({"/lora.safetensors": data, "/w.tar": _tar({"a.safetensors": data})})
    cache = WeightsCache(tmp_path / "cache")
    one = fetch_url(server.url + "/lora.safetensors", cache)
    tar = fetch_url(server.url + "/w.tar", cache)
    assert one.name == "weights.bin" and one.read_bytes() == data
    assert (tar / "a.safetensors").read_bytes() == data
    before = list(server.log)
    assert fetch_url(server.url + "/lora.safetensors", cache) == one
    assert fetch_url(server.url + "/w.tar", cache) == tar
    assert fetch_url(server.url + "/w.tar", WeightsCache(tmp_path / "cache")) == tar  # a new process, same disk
    assert server.log == before


def test_eviction_removes_the_least_recently_used_entry_first_and_before_downloading(serve, tmp_path):
    files = {f"/{n}.bin": bytes([ord(n)]) * 100_000 for n in "abc"}
    server = serve(files)
    cache = WeightsCache(tmp_path / "cache", max_bytes=250_000)  # room for two
    a = fetch_url(server.url + "/a.bin", cache)
    time.sleep(0.02)
    b = fetch_url(server.url + "/b.bin", cache)
    time.sleep(0.02)
    assert fetch_url(server.url + "/a.bin", cache) == a  # a hit: b is now the least recently used
    time.sleep(0.02)
    state_when_c_was_requested = []
    server.on_request = lambda path: state_when_c_was_requested.append((a.exists(), b.exists()))
    c = fetch_url(server.url + "/c.bin", cache)
    assert a.exists() and c.exists() and not b.exists()
    assert [e.name for e in cache.entries()] == [a.parent.name, c.parent.name]
    # the size came with the first answer and b was gone before the body was written
    assert state_when_c_was_requested == [(True, True)]
    assert cache_mod.disk_size(tmp_path / "cache") <= 250_000


def test_a_download_larger_than_the_disk_can_hold_is_refused_before_anything_is_evicted(serve, tmp_path, monkeypatch):
    server = serve({"/a.bin": b"a" * 1000, "/huge.bin": b"h" * 50_000})
    cache = WeightsCache(tmp_path / "cache")
    a = fetch_url(server.url + "/a.bin", cache)
    real = shutil.disk_usage
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    with pytest.raises(DownloadError, match=r"replicate_weights: .*/huge.bin is 50000 bytes; .* only 10000 bytes free"):
        fetch_url(server.url + "/huge.bin", cache)
    assert a.exists() and _left(tmp_path / "cache") == [a.parent.name]
    assert len(server.gets("/huge.bin")) == 1  # the answer's headers were enough


def test_concurrent_fetches_of_one_url_make_one_download(serve, tmp_path):
    data = os.urandom(500_000)
    server = serve({"/same.tar": _tar({"lora.safetensors": data})}, ranges=False)
    server.delay = 0.3
    cache = WeightsCache(tmp_path / "cache")
    barrier = threading.Barrier(4)
    results: list[Path] = []

    def worker():
        barrier.wait()
        results.append(fetch_url(server.url + "/same.tar", cache))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 4 and len(set(results)) == 1
    assert (results[0] / "lora.safetensors").read_bytes() == data
    assert len(server.gets()) == 1
    assert _left(tmp_path / "cache") == [results[0].name]


def test_when_the_first_of_concurrent_fetches_fails_the_next_one_retries(serve, tmp_path):
    data = os.urandom(100_000)
    server = serve({"/flaky.bin": data})
    server.fail = dl.RETRIES  # exactly the first fetch's attempts fail
    server.delay = 0.1
    cache = WeightsCache(tmp_path / "cache")
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def worker():
        barrier.wait()
        try:
            outcomes.append(fetch_url(server.url + "/flaky.bin", cache))
        except DownloadError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    paths = [o for o in outcomes if isinstance(o, Path)]
    errors = [o for o in outcomes if isinstance(o, DownloadError)]
    assert len(paths) == 1 and len(errors) == 1 and paths[0].read_bytes() == data
    assert len(server.gets()) == dl.RETRIES + 1


def test_a_compressed_tar_bigger_than_the_free_disk_is_refused_naming_the_limit(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(_tar({"zeros.bin": bytes(4 * MiB)}, mode="w:gz"))  # a few KiB compressed
    assert bomb.stat().st_size < 64 * KiB
    monkeypatch.setattr("weights.archive.MAX_UNPACKED_BYTES", 1 * MiB)
    with pytest.raises(ArchiveError, match=r"unpacks to 4194304 bytes; at most 1048576 .*MAX_UNPACKED_BYTES"):
        extract_tar(bomb, tmp_path / "out" / "e", input_name="replicate_weights")
    monkeypatch.setattr("weights.archive.MAX_UNPACKED_BYTES", 64 * 1024**3)
    real = shutil.disk_usage
    monkeypatch.setattr("weights.archive.shutil.disk_usage", lambda p: real(p)._replace(free=2 * MiB))
    with pytest.raises(ArchiveError, match=r"^replicate_weights: bomb.tar.gz unpacks to 4194304 bytes; only 2097152 bytes are free"):
        extract_tar(bomb, tmp_path / "out" / "e", input_name="replicate_weights")
    assert _left(tmp_path / "out") == []


def test_a_stale_temp_file_of_a_killed_process_is_swept(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    (root / ".abc.download").write_bytes(b"x")
    (root / ".abc.download.123.part").write_bytes(b"x")
    (root / ".fresh.download").write_bytes(b"x")
    for name in (".abc.download", ".abc.download.123.part"):
        os.utime(root / name, (1, 1))
    WeightsCache(root)
    assert _left(root) == [".fresh.download"]


# --- pget and logs ------------------------------------------------------------------------------------


def test_pget_on_path_is_used_with_an_argument_list_and_the_same_atomic_placement(serve, tmp_path, monkeypatch):
    data = os.urandom(100_000)
    server = serve({"/p.bin": data})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log_file = tmp_path / "argv.txt"
    pget = bin_dir / "pget"
    pget.write_text(
        f"#!{sys.executable}\n"
        "import sys, urllib.request\n"
        f"open({str(log_file)!r}, 'a').write(repr(sys.argv[1:]) + '\\n')\n"
        "if 'fail' in sys.argv[1]: sys.exit(3)\n"
        "open(sys.argv[2], 'wb').write(urllib.request.urlopen(sys.argv[1]).read())\n"
    )
    pget.chmod(0o755)
    monkeypatch.setattr(dl.shutil, "which", lambda name, *a, **k: str(pget) if name == "pget" else None)
    cache = WeightsCache(tmp_path / "cache")
    got = fetch_url(server.url + "/p.bin", cache)
    assert got.read_bytes() == data
    argv = eval(log_file.read_text().splitlines()[0])  # noqa: S307 - our own repr
    assert argv[0] == server.url + "/p.bin"
    assert Path(argv[1]).parent == tmp_path / "cache" and Path(argv[1]).name.endswith(".part")
    assert _left(tmp_path / "cache") == [got.parent.name]
    with pytest.raises(DownloadError, match="replicate_weights: could not download .*/fail.bin"):
        fetch_url(server.url + "/fail.bin", cache)
    assert _left(tmp_path / "cache") == [got.parent.name]


def test_progress_is_logged_for_large_files(serve, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(dl, "LOG_MIN_BYTES", 1 * MiB)
    data = os.urandom(4 * MiB)
    server = serve({"/big": data})
    server.delay = 0.1
    with caplog.at_level(logging.INFO, logger="weights.download"):
        download(server.url + "/big", tmp_path / "big", chunk_size=512 * KiB, connections=2, input_name="sdxl-base")
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.match(r"sdxl-base: \d+% of 4 MB at [\d.]+ MB/s", m) for m in lines), lines
    assert any(re.match(r"sdxl-base: downloaded .* \(4\.2 MB\) in .* MB/s\)", m) for m in lines), lines
