"""A disk cache for user weights (``replicate_weights``, ``COG_WEIGHTS``), keyed by source, least recently used out first.

What goes in is decided by ``weights.sources`` (a URL download, a data: URI's bytes, a copy of an allowed
local file); the cache only keeps it. A tar is extracted (safely) into the entry; any other file is kept
as is. Entries appear atomically, so a failed or cancelled fetch leaves no entry, and ``discard`` drops an
entry whose content turned out unusable. The cache is private to the server's user: its folder and
entries are 0700, files 0600. Concurrent requests for the same source wait for one fetch. Room is made
before downloading: the size the server announces is checked against the disk (free space plus what
eviction can reclaim) and least recently used entries are evicted until it fits ``max_bytes`` and the free
space; a tar gets the same treatment for its unpacked size before extraction. ``max_bytes`` is also the
ceiling of a single download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .archive import extract_tar, make_private
from .env import env_number
from .errors import DownloadError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024**3
STALE_SECONDS = 24 * 3600  # a temp file this old belongs to no running fetch
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "weights-cache" / "trained"

# fill(raw, make_room): write the payload to the file ``raw``; call make_room(size) before writing a known size
Fill = Callable[[Path, Callable[[int], None]], None]


def disk_size(path: Path) -> int:
    """Bytes on disk of a cache entry (a file, or a directory's regular files; links not followed)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def max_bytes_from_env() -> int:
    value = env_number("SDXL_LORA_CACHE_BYTES", DEFAULT_MAX_BYTES, int)
    return value if value > 0 else DEFAULT_MAX_BYTES


class WeightsCache:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._evict_lock = threading.RLock()
        self._sweep()

    @classmethod
    def from_env(cls) -> "WeightsCache":
        """``SDXL_LORA_CACHE`` (default ./weights-cache/trained), ``SDXL_LORA_CACHE_BYTES`` (default 20 GiB)."""
        return cls(Path(os.environ.get("SDXL_LORA_CACHE") or DEFAULT_ROOT), max_bytes_from_env())

    def fetch(self, key_text: str, fill: Fill, *, input_name: str, label: str) -> Path:
        """The local directory (extracted tar) or file cached under ``key_text``, filled at most once.

        ``fill(raw, make_room)`` writes the payload into ``raw`` (a temp file inside the cache); ``label`` names
        the source in logs and messages. Concurrent calls for the same key wait for one fill (a per-key lock):
        the waiters then find the entry, or, if that fill failed, the next one tries again.
        """
        key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
        with self._lock_for(key):
            entry = self.root / key
            if entry.exists():
                os.utime(entry)  # mark as recently used
                log.info("%s: cache hit for %s", input_name, label)
                return self._payload(entry)
            self._make_private_root()
            raw = self.root / f".{key}.download"
            try:  # finally, not except: a cancellation (a BaseException) must leave nothing either
                fill(raw, lambda size: self._make_room(size, input_name=input_name, label=label))
                raw.chmod(0o600)
                self._place(raw, entry, input_name)
            finally:
                raw.unlink(missing_ok=True)
            os.utime(entry)
            return self._payload(entry)

    def entry_of(self, path: Path) -> Path | None:
        """The entry holding ``path`` (a payload ``fetch`` returned), or None when it is not in this cache."""
        path = Path(path)
        for candidate in (path, *path.parents):
            if candidate.parent == self.root:
                return candidate
        return None

    def discard(self, path: Path) -> None:
        """Drop the entry holding ``path``: its content could not be used, so it must not be served again."""
        entry = self.entry_of(path)
        if entry is not None and not entry.name.startswith("."):
            with self._lock_for(entry.name):
                log.info("weights cache: dropping %s (its content was refused)", entry.name)
                shutil.rmtree(entry, ignore_errors=True)

    def _make_private_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.root.stat().st_mode & 0o077:
            self.root.chmod(0o700)

    def _make_room(self, size: int, *, input_name: str, label: str) -> None:
        """Before a download of ``size`` bytes: evict least recently used entries so it fits, or refuse."""
        with self._evict_lock:
            reclaimable = sum(disk_size(e) for e in self._evictable())
            free = shutil.disk_usage(self.root).free
            if size > free + reclaimable:
                raise DownloadError(
                    input_name, f"{label} is {size} bytes; the weights cache has only {free} bytes free "
                    f"on its disk and {reclaimable} bytes in cached entries")
        self._evict(keep_free=size, incoming=size)

    def _place(self, raw: Path, entry: Path, input_name: str) -> None:
        if tarfile.is_tarfile(raw):
            # room for the unpacked files (the tar's declared total) while the tar is still on disk
            extract_tar(raw, entry, input_name=input_name, before_extract=lambda total: self._evict(keep_free=total, incoming=total))
        else:  # a single file (e.g. a .safetensors LoRA): keep it in a one-file entry
            self._evict(keep_free=0, incoming=raw.stat().st_size)  # for a download of unknown size
            tmp = self.root / f".{entry.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir(mode=0o700)
                raw.rename(tmp / "weights.bin")
                make_private(tmp)
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
            sizes = {e: disk_size(e) for e in entries}
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
