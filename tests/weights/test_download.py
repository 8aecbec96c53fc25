"""The downloader and the weights cache against loopback HTTP servers: range requests, resume after a
dropped connection, failures and cancellation leaving nothing, no network on a cache hit, LRU eviction
before downloading, one download for concurrent requests, pget kept, room made before extracting."""

from __future__ import annotations

import http.server
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

KiB, MiB = 1024, 1024**2


class Server:
    """A loopback HTTP server over ``files`` (path -> bytes) that records every request.

    ranges: honour ``Range`` (206 + Content-Range, Accept-Ranges: bytes) or ignore it (200, whole body);
    fail: answer 500 to that many GETs (``ALWAYS`` for every one); drop[path] = (n, times): for the next
    ``times`` GETs of path, announce the full length but send ``n`` bytes and close; stall[path] = n:
    send ``n`` bytes, then wait for ``release`` (at most 10 s); delay: seconds before answering a GET.
    """

    ALWAYS = 10**9

    def __init__(self, files: dict[str, bytes], *, ranges: bool = True):
        self.files, self.ranges = files, ranges
        self.fail = 0
        self.drop: dict[str, tuple[int, int]] = {}
        self.stall: dict[str, int] = {}
        self.delay = 0.0
        self.release = threading.Event()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.on_request = None
        self.lock = threading.Lock()
        self.active = self.peak = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                outer.requests.append(("HEAD", self.path, self.headers.get("Range")))
                body = outer.files.get(self.path)
                if body is None or outer.fail:
                    self.send_error(500 if outer.fail else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if outer.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                with outer.lock:
                    outer.requests.append(("GET", self.path, self.headers.get("Range")))
                    outer.active += 1
                    outer.peak = max(outer.peak, outer.active)
                try:
                    self._get()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with outer.lock:
                        outer.active -= 1

            def _get(self):
                if outer.on_request is not None:
                    outer.on_request(self.path)
                if outer.delay:
                    time.sleep(outer.delay)
                body = outer.files.get(self.path)
                if outer.fail > 0 or body is None:
                    if outer.fail > 0:
                        outer.fail -= 1
                    self.send_error(500 if body is not None else 404)
                    return
                start, end = 0, len(body)
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if outer.ranges and m:
                    start = int(m[1])
                    end = min(int(m[2]) + 1, len(body)) if m[2] else len(body)
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if outer.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                part = body[start:end]
                with outer.lock:
                    cut, times = outer.drop.get(self.path, (None, 0))
                    if times > 0:
                        outer.drop[self.path] = (cut, times - 1)
                    else:
                        cut = None
                if cut is not None:
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if self.path in outer.stall:
                    self.wfile.write(part[: outer.stall[self.path]])
                    self.wfile.flush()
                    outer.release.wait(10)
                    return
                self.wfile.write(part)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, path: str | None = None) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and (path is None or r[1] == path)]

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def make(files, **kwargs) -> Server:
        servers.append(Server(files, **kwargs))
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
    server.fail = Server.ALWAYS
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
    start = time.monotonic()
    with pytest.raises(Cancelled):
        fetch_url(server.url + "/slow.tar", cache, progress=progress, input_name="replicate_weights")
    assert time.monotonic() - start < 3  # not held up by the stalled connections
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
    before = list(server.requests)
    assert fetch_url(server.url + "/lora.safetensors", cache) == one
    assert fetch_url(server.url + "/w.tar", cache) == tar
    assert fetch_url(server.url + "/w.tar", WeightsCache(tmp_path / "cache")) == tar  # a new process, same disk
    assert server.requests == before


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
