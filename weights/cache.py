"""A disk cache for user weights (``replicate_weights``, ``COG_WEIGHTS``), keyed by source, least recently used out first.

A source is an http(s) URL or a local path. A tar is extracted (safely) into the entry; any other
file is kept as is. Entries appear atomically, so a failed or cancelled fetch leaves no entry.
Concurrent requests for the same source wait for one fetch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import threading
from pathlib import Path

from .archive import extract_tar
from .download import download

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024**3


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

    def fetch(self, source: str, *, what: str = "replicate_weights") -> Path:
        """A local directory (extracted tar) or file for ``source``, fetched at most once."""
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
            try:
                if local is None:
                    download(source, raw, what=what)
                else:
                    shutil.copyfile(local, raw)
                self._evict(keep_free=_size(raw))
                self._place(raw, entry, what)
            finally:
                raw.unlink(missing_ok=True)
            return self._payload(entry)

    def _place(self, raw: Path, entry: Path, what: str) -> None:
        if tarfile.is_tarfile(raw):
            extract_tar(raw, entry, what=what)
        else:  # a single file (e.g. a .safetensors LoRA): keep it in a one-file entry
            tmp = self.root / f".{entry.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            raw.rename(tmp / "weights.bin")
            tmp.rename(entry)

    @staticmethod
    def _payload(entry: Path) -> Path:
        single = entry / "weights.bin"
        return single if single.is_file() and len(list(entry.iterdir())) == 1 else entry

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def entries(self) -> list[Path]:
        """Cached entries, least recently used first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    def _evict(self, keep_free: int) -> None:
        """Drop least recently used entries until the cache fits ``max_bytes`` and the disk has ``keep_free``."""
        entries = self.entries()
        total = sum(_size(e) for e in entries)
        while entries and (
            total + keep_free > self.max_bytes or shutil.disk_usage(self.root).free < keep_free
        ):
            oldest = entries.pop(0)
            total -= _size(oldest)
            log.info("weights cache: evicting %s", oldest.name)
            shutil.rmtree(oldest, ignore_errors=True)
