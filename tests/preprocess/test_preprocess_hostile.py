"""Hostile archives: traversal, links, bombs, non-archives. Each ends in PreprocessError naming
input_images, and nothing is written outside out_dir (checked against a canary folder)."""

from __future__ import annotations

import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from helpers.media import tar_bytes

from preprocess import PreprocessError, prepare

BOMB_BYTES = 64 * 1024**2  # zeros: deflate squeezes them ~1000x


@pytest.fixture
def layout(tmp_path):
    """tmp/canary (must stay empty), tmp/work/out (the out_dir), tmp/uploads (archives)."""
    (tmp_path / "canary").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "uploads").mkdir()
    return tmp_path


def _expect_refusal(layout: Path, archive: Path, match: str) -> None:
    out = layout / "work" / "out"
    with pytest.raises(PreprocessError, match=match) as err:
        prepare(archive, out, resolution=32)
    assert str(err.value).startswith("input_images")
    assert list((layout / "canary").iterdir()) == []
    outside = [p for p in layout.rglob("*") if p.is_file() and out not in p.parents and p.parent != layout / "uploads"]
    assert outside == []
    assert not (out / ".intake").exists()
    assert not Path("/tmp/evil.png").exists()


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def _tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    path.write_bytes(tar_bytes(entries, mode, fmt=tarfile.DEFAULT_FORMAT))
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize("name", ["../evil.png", "../../canary/evil.png", "ok/../../evil.png", "/tmp/evil.png", "CANARY"])
def test_zip_path_traversal(layout, kit, name):
    name = str(layout / "canary" / "evil.png") if name == "CANARY" else name
    archive = _zip(layout / "uploads" / "in.zip", [("good.png", kit.png()), (name, kit.png(seed=1))])
    _expect_refusal(layout, archive, "absolute path|outside the archive")


@pytest.mark.parametrize("name", ["../evil.png", "../../canary/evil.png", "/tmp/evil.png", "CANARY"])
def test_tar_path_traversal(layout, kit, name):
    name = str(layout / "canary" / "evil.png") if name == "CANARY" else name
    archive = _tar(layout / "uploads" / "in.tar", [("good.png", kit.png()), (name, kit.png(seed=1))])
    _expect_refusal(layout, archive, "absolute path|outside the archive")


def test_zip_symlink_member(layout, kit):
    link = zipfile.ZipInfo("pic.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(layout / "uploads" / "in.zip", [("good.png", kit.png()), (link, str(layout / "canary" / "evil.png").encode())])
    _expect_refusal(layout, archive, "symbolic link")


@pytest.mark.parametrize(
    "entries",
    [
        lambda c, png: [_link("pic.png", "/etc/passwd", tarfile.SYMTYPE)],
        lambda c, png: [_link("dir", str(c), tarfile.SYMTYPE), ("dir/evil.png", png)],
        lambda c, png: [_link("up", "../../canary", tarfile.SYMTYPE), ("up/evil.png", png)],
        lambda c, png: [("good.png", png), _link("hard.png", str(c / "evil.png"), tarfile.LNKTYPE)],
        lambda c, png: [("good.png", png), _link("hard.png", "../canary/evil.png", tarfile.LNKTYPE)],
    ],
    ids=["symlink-file", "symlink-dir-absolute", "symlink-dir-relative", "hardlink-absolute", "hardlink-relative"],
)
def test_tar_links(layout, kit, entries):
    archive = _tar(layout / "uploads" / "in.tar.gz", entries(layout / "canary", kit.png()), mode="w:gz")
    _expect_refusal(layout, archive, "link")


def test_tar_device_member(layout, kit):
    fifo = tarfile.TarInfo("pipe.png")
    fifo.type = tarfile.FIFOTYPE
    archive = _tar(layout / "uploads" / "in.tar", [("good.png", kit.png()), fifo])
    _expect_refusal(layout, archive, "not a regular file")


def test_zip_bomb(layout, kit):
    archive = _zip(layout / "uploads" / "bomb.zip", [("good.png", kit.png()), ("huge.bmp", bytes(BOMB_BYTES))])
    assert archive.stat().st_size < BOMB_BYTES // 500
    _expect_refusal(layout, archive, "MAX_RATIO.*decompression bomb")


def test_tar_gz_bomb(layout, kit):
    archive = _tar(layout / "uploads" / "bomb.tar.gz", [("good.png", kit.png()), ("huge.bmp", bytes(BOMB_BYTES))], "w:gz")
    _expect_refusal(layout, archive, "MAX_RATIO.*decompression bomb")


def test_zip_bomb_lying_about_its_size(layout, kit, monkeypatch):
    """The header claims little; reading stops at MAX_MEMBER_BYTES whatever the header says."""
    import preprocess.intake as intake

    monkeypatch.setattr(intake, "MAX_MEMBER_BYTES", 1024**2)
    monkeypatch.setattr(intake, "_check_member_size", lambda *a: None)  # as if the header lied
    archive = _zip(layout / "uploads" / "bomb.zip", [("big.png", bytes(2 * 1024**2))])
    _expect_refusal(layout, archive, "MAX_MEMBER_BYTES")


def test_too_many_members(layout, kit, monkeypatch):
    import preprocess.intake as intake

    monkeypatch.setattr(intake, "MAX_MEMBERS", 5)
    archive = _zip(layout / "uploads" / "many.zip", [(f"{i}.txt", b"x") for i in range(6)])
    _expect_refusal(layout, archive, "MAX_MEMBERS")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100_000, 100_000), (20_000, 5_000)])
def test_pixel_bomb(layout, kit, size):
    bomb = _png_header_only(*size)
    assert len(bomb) < 100
    archive = _zip(layout / "uploads" / "pixels.zip", [("good.png", kit.png()), ("bomb.png", bomb)])
    _expect_refusal(layout, archive, "bomb.png is .*MAX_IMAGE_PIXELS")


def test_empty_zip(layout):
    archive = _zip(layout / "uploads" / "empty.zip", [])
    _expect_refusal(layout, archive, r"empty\.zip holds no image files")


def test_empty_tar(layout):
    archive = _tar(layout / "uploads" / "empty.tar", [])
    _expect_refusal(layout, archive, r"empty\.tar holds no image files")


@pytest.mark.parametrize("data", [b"", b"just some text\n" * 100, b"PK\x03\x04 broken zip" * 3, bytes(range(256)) * 8])
def test_not_an_archive(layout, data):
    archive = layout / "uploads" / "upload"
    archive.write_bytes(data)
    _expect_refusal(layout, archive, "is not a zip or tar archive")


def test_truncated_tar_gz(layout, kit):
    archive = _tar(layout / "uploads" / "in.tar.gz", [("a.png", kit.png()), ("b.png", kit.png((200, 200), seed=2))], "w:gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    _expect_refusal(layout, archive, "corrupt or truncated|not a zip or tar")


def test_no_images(layout):
    archive = _zip(layout / "uploads" / "docs.zip", [("readme.txt", b"hi"), ("data/x.json", b"{}")])
    _expect_refusal(layout, archive, "holds no image files")
