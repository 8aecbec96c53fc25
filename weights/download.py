"""Fetch a URL into a local file: Replicate's ``pget`` when it is on PATH, else parallel range requests.

The file is written beside its destination (a ``.part`` temp file in the same directory, never through
/tmp) and renamed into place only once complete and size-checked, so a failed or cancelled download
(any BaseException, such as cog's CancelationException) leaves nothing behind.

Every download is bounded (``_Limits``): in bytes (``max_bytes``: the announced size is checked before
anything is written, and the bytes received while streaming, so a body without a length is cut off),
and in time (``SDXL_DOWNLOAD_STALL_SECONDS``, default 60, without a byte, counted across all retries
and connections: each socket waits at most what is left of it). Redirects: http(s) only, at most
``MAX_REDIRECTS``; a loop fails at once. pget is used only for a file whose HEAD announces a size
within the ceiling, and is killed when it writes past it or stalls.

Without pget:

- The first request is a GET for the first chunk (``Range: bytes=0-...``). A server that honours it
  (206 with a ``Content-Range`` total) is read with up to ``SDXL_DOWNLOAD_CONNECTIONS`` (default 4)
  connections, one chunk at a time each; chunks are 16-64 MiB scaled to the file and written with
  ``os.pwrite`` into a temp file preallocated to the full size. A server that ignores the range (200)
  is read as one plain stream, whose Content-Length is checked.
- Each chunk is retried with backoff; a connection that drops mid-chunk is resumed with a Range request
  for the rest of the chunk. ``RETRIES`` attempts in a row without progress fail the download, as does
  any 4xx answer or a full disk at once.
- The size is known before any byte is written: ``on_size(total)`` lets the caller make room first (the
  weights cache evicts there) and may refuse by raising.
- Progress is logged every 10% or 5 s (with MB/s) for files over ``LOG_MIN_BYTES``; ``progress(done,
  total)`` is called about 5 times a second from the calling thread, so it may raise to cancel.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .env import env_number
from .errors import DownloadError

log = logging.getLogger(__name__)

RETRIES = 3  # attempts in a row without progress, per chunk (or per plain download), before giving up
MAX_ATTEMPTS = 12  # attempts per chunk in all, even when each made some progress
CONNECTIONS = 4  # default for SDXL_DOWNLOAD_CONNECTIONS
MAX_CONNECTIONS = 32
MIN_CHUNK = 16 * 1024**2
MAX_CHUNK = 64 * 1024**2
READ_SIZE = 1024**2  # bytes per read / pwrite
STALL_SECONDS = 60.0  # default for SDXL_DOWNLOAD_STALL_SECONDS: no byte for this long, across all retries, fails
MAX_BYTES = 20 * 1024**3  # default ceiling of one download (the weights cache passes its own size)
MAX_REDIRECTS = 10
LOG_MIN_BYTES = 64 * 1024**2  # progress lines only for files at least this large
LOG_EVERY_S = 5.0
USER_AGENT = "cog-sdxl"

Progress = Callable[[int, "int | None"], None]


class _Failed(Exception):
    """A download failure; ``download`` turns it into a DownloadError naming the input."""


class _Retry(_Failed):
    """A failure worth another attempt (connection refused or dropped, timeout, 5xx, short read)."""


class _Stopped(Exception):
    """Another worker failed or the download was cancelled."""


def stall_seconds_from_env() -> float:
    seconds = env_number("SDXL_DOWNLOAD_STALL_SECONDS", STALL_SECONDS, float)
    return seconds if seconds > 0 else STALL_SECONDS


class _Limits:
    """The bounds of one download: ``max_bytes`` in all, and ``stall_seconds`` without a byte, whichever
    connection or attempt the bytes (or their absence) come from."""

    def __init__(self, max_bytes: int, stall_seconds: float):
        self.max_bytes, self.stall_seconds = max_bytes, stall_seconds
        self.last_byte = time.monotonic()

    def arrived(self) -> None:
        self.last_byte = time.monotonic()  # a float store: atomic enough across worker threads

    def remaining(self) -> float:
        """Seconds left before the download counts as stalled; raises once there are none."""
        left = self.stall_seconds - (time.monotonic() - self.last_byte)
        if left <= 0:
            raise self.stalled()
        return left

    def stalled(self) -> "_Failed":
        return _Failed(f"no data arrived for {self.stall_seconds:.0f} s (a stalled connection; the limit is "
                       "SDXL_DOWNLOAD_STALL_SECONDS)")

    def too_large(self, size: int | str) -> "_Failed":
        return _Failed(f"{size} bytes is over the limit of {self.max_bytes} bytes (the size of the weights cache)")

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise self.too_large(size)


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) only (urllib's default also follows ftp://), at most MAX_REDIRECTS."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a {scheme or 'relative'}: URL refused; "
                                         "only http(s) is followed", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """http(s) only: no file:, ftp: or data: handlers, even through a redirect; proxies from the environment."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    _HttpRedirects(), urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def connections_from_env() -> int:
    return max(1, min(env_number("SDXL_DOWNLOAD_CONNECTIONS", CONNECTIONS, int), MAX_CONNECTIONS))


def download(
    url: str,
    dest: Path,
    *,
    input_name: str = "weights",
    connections: int | None = None,
    chunk_size: int | None = None,
    on_size: Callable[[int], None] | None = None,
    progress: Progress | None = None,
    max_bytes: int | None = None,
    stall_seconds: float | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (a file path). Raises DownloadError naming ``input_name``.

    ``connections`` defaults to ``SDXL_DOWNLOAD_CONNECTIONS`` (4); ``chunk_size`` to 16-64 MiB scaled to the
    file. ``on_size(total)`` is called once the size is known, before anything is written. ``max_bytes``
    (default ``MAX_BYTES``) is a ceiling checked against the announced size and, while streaming, against
    the bytes received (a body without a length, e.g. chunked, is cut off there). The download fails once
    ``stall_seconds`` (default ``SDXL_DOWNLOAD_STALL_SECONDS``, 60) pass without a byte, counted across
    all retries and connections.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    start = time.monotonic()
    try:
        try:
            pget = shutil.which("pget")
            limits = _Limits(max_bytes or MAX_BYTES, stall_seconds or stall_seconds_from_env())
            size = _pget(pget, url, tmp, on_size, limits) if pget else None
            if size is None:  # no pget, or pget declined (no announced size within the ceiling)
                job = _Download(url, tmp, input_name=input_name, connections=connections or connections_from_env(),
                                chunk_size=chunk_size, on_size=on_size, progress=progress, limits=limits)
                size = job.run()
        except _Failed as e:
            raise DownloadError(input_name, f"could not download {url}: {e}") from None
        except OSError as e:  # e.g. the temp file could not be created or preallocated
            raise DownloadError(input_name, f"could not download {url}: {e}") from e
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.monotonic() - start
    log.info("%s: downloaded %s (%.1f MB) in %.1fs (%.1f MB/s)", input_name, url, size / 1e6, seconds,
             size / 1e6 / max(seconds, 1e-6))
    return dest


# --- pget ------------------------------------------------------------------------------------------


def _pget(pget: str, url: str, tmp: Path, on_size: Callable[[int], None] | None, limits: _Limits) -> int | None:
    """pget for a file whose HEAD announces a size within the ceiling (None otherwise: our downloader
    then streams it, counting bytes). pget is watched: killed once the file grows past the announced
    size or stops changing for ``limits.stall_seconds``."""
    size = _head_size(url, limits)
    if size is None or size > limits.max_bytes:
        return None
    if on_size is not None:
        on_size(size)
    last: Exception | None = None
    for attempt in range(1, RETRIES + 1):
        tmp.unlink(missing_ok=True)  # pget writes the destination itself; we rename it into place after
        try:
            _run_watched([pget, url, str(tmp)], tmp, size, limits)
            got = tmp.stat().st_size
            if got != size:
                raise _Retry(f"got {got} of {size} bytes")
            return got
        except (OSError, subprocess.CalledProcessError, _Retry) as e:
            last = e
            log.warning("pget of %s failed (attempt %d/%d): %s", url, attempt, RETRIES, e)
            if attempt < RETRIES:
                _backoff(attempt, None)
    raise _Failed(str(last))


def _run_watched(argv: list[str], out: Path, size: int, limits: _Limits) -> None:
    """Run ``argv`` (a list, never a shell string) while ``out`` grows; kill it past ``size`` bytes, after
    ``limits.stall_seconds`` without a change, or on any exception (a cancellation too)."""
    process = subprocess.Popen(argv, close_fds=True, stdin=subprocess.DEVNULL)
    try:
        seen = None
        while process.poll() is None:
            try:
                st = out.stat()
                now = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                now = None
            if now != seen:
                seen = now
                limits.arrived()
            if now is not None and now[0] > size:
                raise _Failed(f"pget wrote {now[0]} bytes; the server announced {size}")
            limits.remaining()  # raises once stalled
            time.sleep(0.2)
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, argv[0])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _head_size(url: str, limits: _Limits) -> int | None:
    """Content-Length from a HEAD request, or None (best effort: pget does the real work)."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with _opener().open(request, timeout=min(limits.stall_seconds, 15.0)) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length is not None and length.isdigit() else None
    except (OSError, http.client.HTTPException, ValueError):
        return None


# --- the project's own downloader -----------------------------------------------------------------

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _content_range(response) -> tuple[int, int, int | None] | None:
    m = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
    if not m:
        return None
    return int(m[1]), int(m[2]), None if m[3] == "*" else int(m[3])


def _content_length(response) -> int | None:
    value = (response.headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _backoff(attempt: int, stop: threading.Event | None) -> None:
    """Sleep 0.25 s, 0.5 s, 1 s, ... (at most 4 s), in short steps so a stop is noticed."""
    deadline = time.monotonic() + min(0.25 * 2 ** (attempt - 1), 4.0)
    while (remaining := deadline - time.monotonic()) > 0:
        if stop is not None and stop.is_set():
            return
        time.sleep(min(remaining, 0.1))


def _scaled_chunk(total: int, connections: int) -> int:
    """About four chunks per connection, between MIN_CHUNK and MAX_CHUNK."""
    return max(MIN_CHUNK, min(MAX_CHUNK, -(-total // (connections * 4))))


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class _Arrived:
    """A response whose ``read(n)`` returns what has arrived (up to n bytes) instead of waiting for all n."""

    def __init__(self, response):
        self.read = response.read1


class _Writer:
    """A file-like sink for shutil.copyfileobj: pwrites at a position and counts progress."""

    def __init__(self, job: _Download, fd: int):
        self.job, self.fd, self.pos = job, fd, 0

    def write(self, data) -> int:
        if self.job.stop.is_set():
            raise _Stopped()
        self.job.limits.arrived()
        if self.pos + len(data) > self.job.limits.max_bytes:  # a body without a length (chunked, endless)
            raise self.job.limits.too_large(f"more than {self.pos + len(data)}")
        _pwrite_all(self.fd, data, self.pos)
        self.pos += len(data)
        self.job.add(len(data))
        return len(data)


def _pwrite_all(fd: int, data, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


class _Download:
    def __init__(self, url: str, tmp: Path, *, input_name: str, connections: int, chunk_size: int | None,
                 on_size: Callable[[int], None] | None, progress: Progress | None, limits: "_Limits"):
        self.url, self.tmp, self.input_name = url, tmp, input_name
        self.limits = limits
        self.connections, self.chunk_size = max(1, connections), chunk_size
        self.on_size, self.progress = on_size, progress
        self.total: int | None = None
        self.done = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.wake = threading.Event()  # set when a worker ends
        self.finished = 0
        self.error: BaseException | None = None
        self.chunks: deque[tuple[int, int]] = deque()

    # -- bookkeeping --

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n

    def fail(self, e: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = e
        self.stop.set()

    # -- requests --

    def open(self, range_header: str | None):
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if range_header:
            headers["Range"] = range_header
        try:
            return _opener().open(urllib.request.Request(self.url, headers=headers), timeout=self.limits.remaining())
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and range_header:
                raise
            if 300 <= e.code < 400:
                raise _Failed(f"a redirect loop or more than {MAX_REDIRECTS} redirects (HTTP {e.code}), or a "
                              "redirect to something other than http(s)") from None
            if 400 <= e.code < 500 and e.code not in (408, 425, 429):
                raise _Failed(f"HTTP {e.code} {e.reason}") from None
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            self.limits.remaining()  # a timeout that used up the stall budget fails as stalled
            raise _Retry(str(getattr(e, "reason", None) or e) or type(e).__name__) from None

    def open_first(self):
        """The opening request, retried: a ranged GET for the first chunk (a 200 means no range support)."""
        first = self.chunk_size or MIN_CHUNK
        for attempt in range(1, RETRIES + 1):
            try:
                try:
                    return self.open(f"bytes=0-{first - 1}")
                except urllib.error.HTTPError:  # 416: an empty file; ask again without a range
                    return self.open(None)
            except _Retry as e:
                log.warning("%s: request for %s failed (attempt %d/%d): %s", self.input_name, self.url, attempt, RETRIES, e)
                if attempt == RETRIES:
                    raise
                _backoff(attempt, None)
        raise AssertionError("unreachable")

    # -- the whole download --

    def run(self) -> int:
        response = self.open_first()
        threads: list[threading.Thread] = []
        try:
            ranged = _content_range(response) if response.status == 206 else None
            if ranged is not None and ranged[0] == 0 and ranged[2] is not None:
                self.total = total = ranged[2]
                first_end = ranged[1] + 1
                self._announce(total)
                chunk = self.chunk_size or _scaled_chunk(total, self.connections)
                self.chunks.extend((s, min(s + chunk, total)) for s in range(first_end, total, chunk))
                n = min(self.connections, 1 + len(self.chunks))
                log.debug("%s: %s is %d bytes: %d range requests over %d connections",
                          self.input_name, self.url, total, 1 + len(self.chunks), n)
                threads = [self._start(self._ranged_worker, (0, first_end), response)]
                threads += [self._start(self._ranged_worker, None, None) for _ in range(n - 1)]
            elif response.status == 200:
                self.total = _content_length(response)
                if self.total is not None:
                    self._announce(self.total)
                threads = [self._start(self._plain_worker, None, response)]
            else:
                raise _Failed(f"unexpected answer {response.status} to a range request "
                              f"(Content-Range {response.headers.get('Content-Range')!r})")
            response = None  # a worker owns it now
            self._supervise(threads)
        finally:
            self.stop.set()  # on success a no-op; on failure or cancellation the workers stop at their next read
            if response is not None:
                response.close()
            deadline = time.monotonic() + 0.5  # workers own their file descriptors: never wait long for stalled ones
            for t in threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.error is not None:
            raise self.error
        if self.total is not None and self.done != self.total:
            raise _Failed(f"got {self.done} of {self.total} bytes")
        return self.done

    def _announce(self, total: int) -> None:
        self.limits.check_size(total)
        if self.on_size is not None:
            self.on_size(total)  # may raise (e.g. not enough disk): nothing has been written yet
        fd = os.open(self.tmp, os.O_WRONLY)
        try:
            try:
                os.posix_fallocate(fd, 0, total)
            except OSError as e:
                if _is_disk_full(e):
                    raise _Failed(f"{total} bytes do not fit on the disk ({e})") from None
                os.ftruncate(fd, total)  # a filesystem without fallocate
        finally:
            os.close(fd)

    def _start(self, target, first_chunk, response) -> threading.Thread:
        def run():
            try:
                target(first_chunk, response)
            except _Stopped:
                pass
            except BaseException as e:  # noqa: BLE001 - reported to the supervising thread
                self.fail(e)
            finally:
                with self.lock:
                    self.finished += 1
                self.wake.set()

        t = threading.Thread(target=run, name="sdxl-download", daemon=True)
        t.start()
        return t

    def _supervise(self, threads: list[threading.Thread]) -> None:
        """Wait for the workers in the calling thread: progress hook and log lines here, cancellation too."""
        started = last_log = time.monotonic()
        last_decile = 0
        while True:
            self.wake.wait(0.2)
            self.wake.clear()
            alive = self.finished < len(threads)
            done, total = self.done, self.total
            if self.progress is not None:
                self.progress(done, total)
            now = time.monotonic()
            big = (total or done) >= LOG_MIN_BYTES
            decile = done * 10 // total if total else 0
            if big and alive and (decile > last_decile or now - last_log >= LOG_EVERY_S):
                rate = done / 1e6 / max(now - started, 1e-6)
                if total:
                    log.info("%s: %d%% of %.0f MB at %.1f MB/s", self.input_name, done * 100 // total, total / 1e6, rate)
                else:
                    log.info("%s: %.0f MB at %.1f MB/s", self.input_name, done / 1e6, rate)
                last_log, last_decile = now, decile
            if not alive or self.stop.is_set():
                return
            try:
                self.limits.remaining()
            except _Failed as e:  # every worker is waiting on a silent connection: give up now
                self.fail(e)
                return

    # -- workers (each with its own file descriptor, so a late one never writes to a reused fd) --

    def _next_chunk(self) -> tuple[int, int] | None:
        with self.lock:
            return self.chunks.popleft() if self.chunks else None

    def _ranged_worker(self, chunk, response) -> None:
        fd = os.open(self.tmp, os.O_WRONLY)
        try:
            if chunk is None:
                chunk = self._next_chunk()
            while chunk is not None:
                self._fetch_chunk(fd, *chunk, response)
                response = None
                chunk = self._next_chunk()
        finally:
            if response is not None:
                response.close()
            os.close(fd)

    def _fetch_chunk(self, fd: int, start: int, end: int, response) -> None:
        pos, failures, attempts = start, 0, 0
        while pos < end:
            if self.stop.is_set():
                raise _Stopped()
            attempts += 1
            before = pos
            try:
                if response is None:
                    response = self.open(f"bytes={pos}-{end - 1}")
                    got = _content_range(response) if response.status == 206 else None
                    if got is None or got[0] != pos or got[2] != self.total:
                        raise _Retry(f"answer {response.status} with Content-Range "
                                     f"{response.headers.get('Content-Range')!r} to a request for bytes {pos}-{end - 1}")
                with response:
                    while pos < end:
                        if self.stop.is_set():
                            raise _Stopped()
                        data = response.read1(min(READ_SIZE, end - pos))  # what has arrived: progress shows
                        if not data:
                            break
                        self.limits.arrived()
                        _pwrite_all(fd, data, pos)
                        pos += len(data)
                        self.add(len(data))
                response = None
                if pos < end:
                    raise _Retry(f"connection closed after {pos - start} of {end - start} bytes of bytes {start}-{end - 1}")
            except (_Retry, OSError, http.client.HTTPException) as e:
                if response is not None:
                    response.close()
                    response = None
                if _is_disk_full(e):
                    raise _Failed(str(e)) from None
                failures = 0 if pos > before else failures + 1
                self.limits.remaining()  # stalled too long in all: fail as stalled
                if failures >= RETRIES or attempts >= MAX_ATTEMPTS:
                    raise _Failed(str(e)) from None
                log.warning("%s: bytes %d-%d of %s: %s; retrying from byte %d", self.input_name, start, end - 1,
                            self.url, e, pos)
                _backoff(failures or 1, self.stop)

    def _plain_worker(self, _chunk, response) -> None:
        """A server without range support: one stream; a failure starts again from the beginning."""
        fd = os.open(self.tmp, os.O_WRONLY)
        writer = _Writer(self, fd)
        try:
            for attempt in range(1, RETRIES + 1):
                try:
                    if response is None:
                        response = self.open(None)
                        if response.status != 200:
                            raise _Retry(f"unexpected answer {response.status}")
                    with response:
                        shutil.copyfileobj(_Arrived(response), writer, READ_SIZE)
                    response = None
                    if self.total is not None and writer.pos != self.total:
                        raise _Retry(f"got {writer.pos} of {self.total} bytes")
                    if self.total is None:
                        os.ftruncate(fd, writer.pos)
                    return
                except (_Retry, OSError, http.client.HTTPException) as e:
                    if response is not None:
                        response.close()
                        response = None
                    self.limits.remaining()  # stalled too long in all: fail as stalled
                    if _is_disk_full(e) or attempt == RETRIES:
                        raise _Failed(str(e)) from None
                    log.warning("%s: download of %s failed (attempt %d/%d): %s", self.input_name, self.url, attempt,
                                RETRIES, e)
                    self.add(-writer.pos)
                    writer.pos = 0
                    _backoff(attempt, self.stop)
        finally:
            if response is not None:
                response.close()
            os.close(fd)
