"""Reading the user's archive (zip, tar, tar.gz/bz2/xz) safely.

Nothing is ever extracted by the archive's own paths: every wanted member is read as a file
object and copied to ``staging/NNNNN`` (a name we choose), so absolute paths, ``..`` and links
cannot place anything outside the work directory. Unsafe members (absolute or ``..`` paths,
symbolic or hard links, device files) reject the whole archive, as do decompression bombs (too
many members or images, too many bytes, an implausible compression ratio).
"""

from __future__ import annotations

import logging
import lzma
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from training import inputs

from .errors import PreprocessError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
MAX_MEMBERS = 10_000
MAX_IMAGES = 1_000  # decoded training images are kept in memory: this bounds it before any decoding
MAX_MEMBER_BYTES = 256 * 1024**2
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_RATIO = 100  # uncompressed / compressed; deflate of real images stays far below
RATIO_FLOOR = 4 * 1024**2  # members smaller than this are never called bombs
_CHUNK = 1024**2
FILETYPES = inputs.FILETYPES


@dataclass(frozen=True)
class Member:
    """One image member: its name inside the archive and where its bytes were staged."""

    name: str
    path: Path

    @property
    def basename(self) -> str:
        return PurePosixPath(self.name).name


@dataclass
class Intake:
    """What an archive held: image members in name order, and the caption csv text if any."""

    images: list[Member] = field(default_factory=list)
    caption_csv: str | None = None
    caption_csv_name: str | None = None


def detect_kind(archive: Path, filetype: str = "infer") -> str:
    """Return "zip" or "tar" from the file's content; ``filetype`` only states an expectation."""
    if filetype not in FILETYPES:
        raise PreprocessError(f"input_images_filetype must be one of {', '.join(FILETYPES)}, not {filetype!r}")
    if not archive.is_file():
        raise PreprocessError(f"input_images: {archive} does not exist or is not a file")
    kind = "zip" if zipfile.is_zipfile(archive) else "tar" if _is_tar(archive) else None
    if kind is None:
        raise PreprocessError(f"input_images: {archive.name} is not a zip or tar archive")
    if filetype != "infer" and filetype != kind:
        raise PreprocessError(f"input_images: {archive.name} is a {kind} archive, but input_images_filetype={filetype!r}")
    return kind


def _is_tar(archive: Path) -> bool:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            return tar.next() is not None or archive.stat().st_size >= tarfile.BLOCKSIZE
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError):
        return False


def read_archive(archive: Path, staging: Path, filetype: str = "infer") -> Intake:
    """Copy the image members and the caption csv of ``archive`` into ``staging``; see the module doc."""
    kind = detect_kind(archive, filetype)
    staging.mkdir(parents=True, exist_ok=True)
    reader = _read_zip if kind == "zip" else _read_tar
    intake = Intake()
    try:
        reader(archive, staging, intake)
    except PreprocessError:
        raise
    except UnicodeDecodeError as e:  # a zip member name flagged UTF-8 that is not
        raise PreprocessError(f"input_images: {archive.name} has a member name that is not valid UTF-8 ({e})") from e
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, RuntimeError) as e:
        raise PreprocessError(f"input_images: {archive.name} is a corrupt or truncated {kind} archive ({e})") from e
    intake.images.sort(key=lambda m: m.name)
    log.info("input_images: %d image(s) found in %s", len(intake.images), archive.name)
    return intake


def _read_zip(archive: Path, staging: Path, intake: Intake) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_count(archive, len(infos))
        total = 0
        for info in infos:
            parts = _safe_parts(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise PreprocessError(f"input_images: member {info.filename!r} of {archive.name} is a symbolic link; links are not accepted")
            if info.is_dir():
                continue
            if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                raise PreprocessError(f"input_images: member {info.filename!r} of {archive.name} is not a regular file")
            _check_member_size(archive, info.filename, info.file_size)
            if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise PreprocessError(
                    f"input_images: member {info.filename!r} of {archive.name} expands {info.file_size} bytes from "
                    f"{info.compress_size} (more than {MAX_RATIO}x, MAX_RATIO): refusing a decompression bomb"
                )
            total += info.file_size
            _check_total(archive, total)
            if _wanted(parts):
                if info.flag_bits & 0x1:
                    raise PreprocessError(f"input_images: member {info.filename!r} of {archive.name} is encrypted")
                with zf.open(info) as src:
                    _stage(archive, "/".join(parts), src, staging, intake)


def _read_tar(archive: Path, staging: Path, intake: Intake) -> None:
    archive_bytes = max(archive.stat().st_size, 1)
    with tarfile.open(archive, mode="r:*") as tar:
        count = total = 0
        # Walk member by member, checking limits before skipping over (i.e. decompressing) any data.
        while (member := tar.next()) is not None:
            count += 1
            _check_count(archive, count)
            parts = _safe_parts(archive, member.name)
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise PreprocessError(
                    f"input_images: member {member.name!r} of {archive.name} is a {kind} link to "
                    f"{member.linkname!r}; links are not accepted"
                )
            if member.isdir():
                continue
            if not member.isfile():
                raise PreprocessError(f"input_images: member {member.name!r} of {archive.name} is not a regular file")
            _check_member_size(archive, member.name, member.size)
            total += member.size
            _check_total(archive, total)
            if total > RATIO_FLOOR and total > MAX_RATIO * archive_bytes:
                raise PreprocessError(
                    f"input_images: {archive.name} expands to more than {MAX_RATIO}x its size (MAX_RATIO): "
                    "refusing a decompression bomb"
                )
            if _wanted(parts):
                src = tar.extractfile(member)
                if src is not None:
                    with src:
                        _stage(archive, "/".join(parts), src, staging, intake)


def _safe_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path components of a member name, refusing absolute paths and ``..``."""
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        raise PreprocessError(f"input_images: member {name!r} of {archive.name} has an absolute path; refusing the archive")
    parts = tuple(p for p in normal.split("/") if p not in ("", "."))
    if ".." in parts:
        raise PreprocessError(f"input_images: member {name!r} of {archive.name} points outside the archive ('..'); refusing the archive")
    return parts


def _wanted(parts: tuple[str, ...]) -> bool:
    """Images and caption csvs, except macOS resource forks and hidden files or folders."""
    if not parts or any(p == "__MACOSX" or p.startswith(".") for p in parts):
        return False
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    return suffix in IMAGE_SUFFIXES or _is_caption_csv(parts[-1])


def _is_caption_csv(basename: str) -> bool:
    lower = basename.lower()
    return lower.endswith(".csv") and "caption" in lower


def _stage(archive: Path, name: str, src: BinaryIO, staging: Path, intake: Intake) -> None:
    """Copy one member's bytes (capped at MAX_MEMBER_BYTES whatever its header said) into staging."""
    if _is_caption_csv(PurePosixPath(name).name):
        if intake.caption_csv is not None:
            raise PreprocessError(
                f"input_images: {archive.name} holds two caption csv files ({intake.caption_csv_name!r}, {name!r}); keep one"
            )
        data = _read_capped(archive, name, src)
        try:
            intake.caption_csv = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PreprocessError(f"input_images: caption csv {name!r} is not UTF-8 text ({e})") from e
        intake.caption_csv_name = name
        return
    if len(intake.images) >= MAX_IMAGES:
        raise PreprocessError(f"input_images: {archive.name} holds more than {MAX_IMAGES} images (MAX_IMAGES)")
    dest = staging / f"{len(intake.images):05d}"
    with dest.open("wb") as out:
        written = 0
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > MAX_MEMBER_BYTES:
                raise PreprocessError(_too_big(archive, name))
            out.write(chunk)
    intake.images.append(Member(name, dest))


def _read_capped(archive: Path, name: str, src: BinaryIO) -> bytes:
    data = src.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise PreprocessError(_too_big(archive, name))
    return data


def _too_big(archive: Path, name: str) -> str:
    return f"input_images: member {name!r} of {archive.name} is larger than {MAX_MEMBER_BYTES} bytes (MAX_MEMBER_BYTES)"


def _check_member_size(archive: Path, name: str, size: int) -> None:
    if size > MAX_MEMBER_BYTES:
        raise PreprocessError(_too_big(archive, name))


def _check_count(archive: Path, count: int) -> None:
    if count > MAX_MEMBERS:
        raise PreprocessError(f"input_images: {archive.name} has more than {MAX_MEMBERS} members (MAX_MEMBERS)")


def _check_total(archive: Path, total: int) -> None:
    if total > MAX_TOTAL_BYTES:
        raise PreprocessError(
            f"input_images: {archive.name} unpacks to more than {MAX_TOTAL_BYTES} bytes (MAX_TOTAL_BYTES): "
            "refusing a decompression bomb"
        )
