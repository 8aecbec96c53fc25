"""Fetch a URL into a local file: Replicate's ``pget`` when it is on PATH, else a streamed download.

Either way the file appears only when complete (written beside it, then renamed), so a
failed or cancelled download leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

RETRIES = 3
CHUNK = 8 * 1024 * 1024


class DownloadError(RuntimeError):
    pass


def download(url: str, dest: Path, *, what: str = "weights") -> Path:
    """Download ``url`` to ``dest`` (a file path). Raises DownloadError naming ``what``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _fetch(url, tmp, what)
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch(url: str, tmp: Path, what: str) -> None:
    pget = shutil.which("pget")
    last: Exception | None = None
    for attempt in range(1, RETRIES + 1):
        start = time.monotonic()
        try:
            if pget:  # argument list, never a shell string
                tmp.unlink(missing_ok=True)
                subprocess.run([pget, url, str(tmp)], check=True, close_fds=True)
            else:
                _stream(url, tmp)
            log.info("downloaded %s (%d bytes) in %.1fs", url, tmp.stat().st_size, time.monotonic() - start)
            return
        except (OSError, subprocess.CalledProcessError, DownloadError) as e:
            last = e
            log.warning("download of %s failed (attempt %d/%d): %s", url, attempt, RETRIES, e)
            time.sleep(min(2 ** (attempt - 1), 4) * 0.25)
    raise DownloadError(f"{what}: could not download {url}: {last}")


def _stream(url: str, tmp: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "cog-sdxl"})
    with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as out:
        expected = response.headers.get("Content-Length")
        shutil.copyfileobj(response, out, CHUNK)
    if expected is not None and tmp.stat().st_size != int(expected):
        raise DownloadError(f"got {tmp.stat().st_size} of {expected} bytes")
