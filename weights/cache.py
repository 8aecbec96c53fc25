"""A disk cache for user weights (``replicate_weights``, ``COG_WEIGHTS``), keyed by source, least recently used out first.

A source is an http(s) URL or a local path. A tar is extracted (safely) into the entry; any other
file is kept as is. Entries appear atomically, so a failed or cancelled fetch leaves no entry.
Concurrent requests for the same source wait for one fetch. Room is made before downloading: the
size the server announces is checked against the disk (free space plus what eviction can reclaim)
and least recently used entries are evicted until it fits ``max_bytes`` and the free space; a tar
gets the same treatment for its unpacked size before extraction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

from .archive import extract_tar
from .download import DownloadError, Progress, download

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024**3
STALE_SECONDS = 24 * 3600  # a temp file this old belongs to no running fetch


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


class WeightsCache:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._evict_lock = threading.RLock()
        self._sweep()

    def fetch(self, source: str, *, what: str = "replicate_weights", progress: Progress | None = None) -> Path:
        """A local directory (extracted tar) or file for ``source``, fetched at most once.

        Concurrent calls for the same source wait for one fetch (a per-source lock): the waiters then find the
        entry, or, if that fetch failed, the next one tries again. ``progress(done, total)`` is passed to the
        downloader (called from this thread; it may raise to cancel).
        """
        source = str(source)
        is_url = source.startswith(("http://", "https://"))
        local = None if is_url else Path(source)
        if local is not None:
            if not local.exists():
                raise FileNotFoundError(f"{what}: {source} is neither an http(s) URL nor an existing path")
            if local.is_dir():
                return local
            stat = local.stat()
            key_text = f"{local.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        else:
            key_text = source
        key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
        with self._lock_for(key):
            entry = self.root / key
            if entry.exists():
                os.utime(entry)  # mark as recently used
                log.info("%s: cache hit for %s", what, source)
                return self._payload(entry)
            self.root.mkdir(parents=True, exist_ok=True)
            raw = self.root / f".{key}.download"
            try:  # finally, not except: a cancellation (a BaseException) must leave nothing either
                if local is None:
                    download(source, raw, what=what, progress=progress,
                             on_size=lambda size: self._make_room(size, what=what, source=source))
                else:
                    self._make_room(local.stat().st_size, what=what, source=source)
                    shutil.copyfile(local, raw)
                self._place(raw, entry, what)
            finally:
                raw.unlink(missing_ok=True)
            os.utime(entry)
            return self._payload(entry)

    def _make_room(self, size: int, *, what: str, source: str) -> None:
        """Before a download of ``size`` bytes: evict least recently used entries so it fits, or refuse."""
        with self._evict_lock:
            reclaimable = sum(_size(e) for e in self._evictable())
            free = shutil.disk_usage(self.root).free
            if size > free + reclaimable:
                raise DownloadError(
                    f"{what}: {source} is {size} bytes; the weights cache at {self.root} has only {free} bytes free "
                    f"on its disk and {reclaimable} bytes in cached entries")
        self._evict(keep_free=size, incoming=size)

    def _place(self, raw: Path, entry: Path, what: str) -> None:
        if tarfile.is_tarfile(raw):
            # room for the unpacked files (the tar's declared total) while the tar is still on disk
            extract_tar(raw, entry, what=what, before_extract=lambda total: self._evict(keep_free=total, incoming=total))
        else:  # a single file (e.g. a .safetensors LoRA): keep it in a one-file entry
            self._evict(keep_free=0, incoming=raw.stat().st_size)  # for a download of unknown size
            tmp = self.root / f".{entry.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir()
                raw.rename(tmp / "weights.bin")
                tmp.rename(entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _payload(entry: Path) -> Path:
        single = entry / "weights.bin"
        return single if single.is_file() and len(list(entry.iterdir())) == 1 else entry

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _evictable(self) -> list[Path]:
        """Entries least recently used first, without those another thread is fetching (their lock is held)."""
        with self._guard:
            busy = {key for key, lock in self._locks.items() if lock.locked()}
        return [e for e in self.entries() if e.name not in busy]

    def entries(self) -> list[Path]:
        """Cached entries, least recently used first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    def _evict(self, keep_free: int, incoming: int) -> None:
        """Drop least recently used entries until ``incoming`` more bytes fit ``max_bytes`` and the disk has
        ``keep_free`` bytes free."""
        with self._evict_lock:
            entries = self._evictable()
            sizes = {e: _size(e) for e in entries}
            total = sum(sizes.values())
            while entries and (
                total + incoming > self.max_bytes or shutil.disk_usage(self.root).free < keep_free
            ):
                oldest = entries.pop(0)
                total -= sizes[oldest]
                log.info("weights cache: evicting %s (%d bytes, least recently used)", oldest.name, sizes[oldest])
                shutil.rmtree(oldest, ignore_errors=True)

    def _sweep(self) -> None:
        """Remove temp files and folders a killed process left behind (older than STALE_SECONDS)."""
        if not self.root.is_dir():
            return
        now = time.time()
        for p in self.root.iterdir():
            try:
                if p.name.startswith(".") and now - p.lstat().st_mtime > STALE_SECONDS:
                    log.info("weights cache: removing stale %s", p.name)
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            except OSError:
                pass
