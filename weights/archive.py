"""Safe extraction of weight tars: nothing lands outside the destination, nothing half-written stays."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import ArchiveError

MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 64 * 1024**3  # a full SDXL fine-tune is ~5 GB; this only stops bombs


def extract_tar(archive: Path, dest: Path, *, input_name: str = "weights",
                before_extract: Callable[[int], None] | None = None) -> Path:
    """Extract ``archive`` into the new directory ``dest`` atomically.

    Uses tarfile's ``data`` filter (no absolute paths, no ``..``, no links pointing out, no
    device files) and checks member count and total size first: the total is the members' declared
    sizes, read from every header (a compressed tar is decompressed to find them), and tarfile writes
    exactly the declared size of each member, so a compression bomb is refused before anything is
    written. It must stay under MAX_UNPACKED_BYTES and under the disk's free space (after
    ``before_extract(total)``, where a cache makes room). ``dest`` appears only once extraction succeeded,
    with its folders 0700 and files 0600 (readable by this user only, whatever modes the tar carried).
    """
    try:
        tar = tarfile.open(archive)  # transparent gzip/bz2/xz
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(input_name, f"{archive.name} is not a readable tar archive ({e})") from e
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ArchiveError(input_name, f"{archive.name} is a truncated or corrupt tar archive ({e})") from e
        if len(members) > MAX_MEMBERS:
            raise ArchiveError(input_name, f"{archive.name} has {len(members)} members; at most {MAX_MEMBERS} are accepted")
        total = sum(m.size for m in members if m.isfile())
        if total > MAX_UNPACKED_BYTES:
            raise ArchiveError(input_name, f"{archive.name} unpacks to {total} bytes; at most {MAX_UNPACKED_BYTES} are accepted"
                               " (MAX_UNPACKED_BYTES)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if before_extract is not None:
            before_extract(total)
        free = shutil.disk_usage(dest.parent).free
        if total > free:
            raise ArchiveError(input_name, f"{archive.name} unpacks to {total} bytes; only {free} bytes are free on the "
                               "server's disk")
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            tar.extractall(tmp, filter="data")
            make_private(tmp)
            tmp.rename(dest)
        except tarfile.FilterError as e:
            raise ArchiveError(input_name, f"{archive.name} has an unsafe member ({e})") from e
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ArchiveError(input_name, f"{archive.name} could not be extracted ({e})") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def make_private(path: Path) -> None:
    """Folders 0700 and files 0600 under (and including) ``path``; links are left alone (never followed)."""
    for p in [path, *path.rglob("*")]:
        if p.is_symlink():
            continue
        p.chmod(0o700 if p.is_dir() else 0o600)
