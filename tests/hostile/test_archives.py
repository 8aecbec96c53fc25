"""Hostile training archives through ``prepare()`` (in process), the one suite for them: path traversal
(POSIX, backslash and drive), links and device members, non-UTF-8 and very long names, thousands of
files, empty archives and non-archives, csv mismatches, fake/truncated images, bombs in every
container (bytes and pixels), and the fuzzing findings.

Every refusal is a PreprocessError starting with ``input_images`` raised before any model is built
(the model classes are replaced by ones that fail the test), and nothing is written outside the
out_dir (a canary folder and its parent are checked).
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest
from hostile.builders import (
    BOMB_BYTES, FAKE_PNG, caption_csv, photos, photos_with_captions, png, png_with_size, tar_bytes, tar_link,
    truncated_png, zip_bytes, zip_symlink, zip_with_raw_name,
)

from preprocess import PreprocessError, dataset, prepare


BUILT: list[str] = []


class _StubCaptioner:
    """Stands in for BLIP in accepted archives without a csv (captioning is not under test here)."""

    def __init__(self, *args, **kwargs):
        BUILT.append("Captioner")

    def caption(self, image, seed=0):
        return "something"

    def close(self):
        pass


@pytest.fixture(autouse=True)
def no_models(monkeypatch):
    """Refusals must come before any model is loaded: building one fails the test; the captioner
    stub records that it was built (a refusal asserts it was not)."""
    import preprocess.caption as caption
    import preprocess.dataset as dataset

    def expensive(*args, **kwargs):
        raise AssertionError("a model was built: the input was not checked before expensive work")

    for name in ("Upscaler", "ClipSegMasker", "FaceMasker"):
        monkeypatch.setattr(dataset, name, expensive)
    monkeypatch.setattr(caption, "Captioner", _StubCaptioner)
    BUILT.clear()


def _write(layout: Path, name: str, data: bytes) -> Path:
    path = layout / "uploads" / name
    path.write_bytes(data)
    return path


def _refused(layout: Path, name: str, data: bytes, match: str, **kwargs) -> str:
    archive = _write(layout, name, data)
    out = layout / "work" / "out"
    with pytest.raises(PreprocessError, match=match) as err:
        prepare(archive, out, resolution=32, **kwargs)
    message = str(err.value)
    assert message.startswith("input_images"), message
    _nothing_outside(layout, out)
    assert not (out / ".intake").exists()
    assert BUILT == [], "a model was built before the refusal"
    return message


def _nothing_outside(layout: Path, out: Path) -> None:
    assert list((layout / "canary").iterdir()) == []
    stray = [p for p in layout.rglob("*") if p.is_file() and out not in p.parents and p.parent != layout / "uploads"]
    assert stray == []
    assert not (layout / "evil.png").exists() and not (layout.parent / "evil.png").exists()


def _accepted(layout: Path, name: str, data: bytes, **kwargs) -> list[str]:
    archive = _write(layout, name, data)
    out = layout / "work" / "out"
    prepare(archive, out, resolution=32, **kwargs)
    _nothing_outside(layout, out)
    return sorted(p.name for p in (out / "images").iterdir())


# --- traversal and links -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.png", "../../canary/evil.png", "ok/../../evil.png", "/tmp/evil.png", "CANARY"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_path_traversal(layout, kind, name):
    name = str(layout / "canary" / "evil.png") if name == "CANARY" else name
    members = [("good.png", png()), (name, png(seed=1))]
    _refused(layout, f"in.{kind}", zip_bytes(members) if kind == "zip" else tar_bytes(members),
             "absolute path|outside the archive")
    assert not Path("/tmp/evil.png").exists()


def test_zip_symlink_member(layout):
    data = zip_bytes([("good.png", png()), zip_symlink("pic.png", str(layout / "canary" / "evil.png"))])
    _refused(layout, "in.zip", data, "symbolic link")


@pytest.mark.parametrize(
    "entries",
    [
        lambda c: [tar_link("pic.png", "/etc/passwd")],
        lambda c: [tar_link("dir", str(c)), ("dir/evil.png", png())],
        lambda c: [tar_link("up", "../../canary"), ("up/evil.png", png())],
        lambda c: [("good.png", png()), tar_link("hard.png", str(c / "evil.png"), tarfile.LNKTYPE)],
        lambda c: [("good.png", png()), tar_link("hard.png", "../canary/evil.png", tarfile.LNKTYPE)],
    ],
    ids=["symlink-file", "symlink-dir-absolute", "symlink-dir-relative", "hardlink-absolute", "hardlink-relative"],
)
def test_tar_links(layout, entries):
    _refused(layout, "in.tar.gz", tar_bytes(entries(layout / "canary"), "w:gz"), "link")


def test_tar_device_member(layout):
    _refused(layout, "in.tar", tar_bytes([("good.png", png()), tar_link("pipe.png", "", tarfile.FIFOTYPE)]),
             "not a regular file")


@pytest.mark.parametrize("name", ["..\\evil.png", "ok\\..\\..\\evil.png", "C:\\evil.png", "c:/evil.png", "//evil.png"])
def test_zip_windows_style_traversal(layout, name):
    _refused(layout, "in.zip", zip_bytes(photos_with_captions(1, (32, 32)) + [(name, png())]),
             "absolute path|outside the archive")


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_absolute_path_into_the_canary(layout, mode):
    evil = str(layout / "canary" / "evil.png")
    _refused(layout, "in.tar", tar_bytes([("good.png", png()), (evil, png(seed=1))], mode), "absolute path")


def test_zip_symlinked_directory_then_a_file_through_it(layout):
    data = zip_bytes([zip_symlink("dir", str(layout / "canary")), ("dir/evil.png", png())])
    _refused(layout, "in.zip", data, "symbolic link")


def test_tar_hard_link_to_a_file_outside(layout):
    secret = layout / "canary" / ".." / "secret.png"
    _refused(layout, "in.tar", tar_bytes([("a.png", png()), tar_link("b.png", str(secret), tarfile.LNKTYPE)]), "hard link")
    _refused(layout, "in.tar", tar_bytes([tar_link("b.png", "../../../etc/passwd", tarfile.LNKTYPE)]), "outside|hard link")


# --- names ---------------------------------------------------------------------------------------


def test_zip_name_flagged_utf8_that_is_not_is_refused_clearly(layout):
    """Fuzzing finding: zipfile raised UnicodeDecodeError (not naming input_images) from read_archive."""
    message = _refused(layout, "in.zip", zip_with_raw_name(b"\xff\xfe\xc3(.png", png()), "not valid UTF-8")
    assert "in.zip" in message


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_non_utf8_names_are_read(layout, fmt):
    names = ["caf\udce9.png", "\udcff\udcfe/x.png"]
    members = [(n, png((32, 32), seed=i)) for i, n in enumerate(names)]
    assert _accepted(layout, "in.tar", tar_bytes(members, fmt=fmt)) == ["0000.png", "0001.png"]


def test_non_utf8_names_with_captions_csv(layout):
    members = [("caf\udce9.png", png((32, 32))), ("captions.csv", caption_csv([("TOK cafe", "caf\udce9.png".encode("utf-8", "surrogateescape").decode("latin-1"))]))]
    # the csv (utf-8 text) cannot name a non-UTF-8 member: a mismatch, said clearly
    _refused(layout, "in.tar", tar_bytes(members), "does not match the images")


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_very_long_names_are_staged_under_our_names(layout, kind):
    members = [("a" * 250 + ".png", png((32, 32))), ("d/" * 120 + "deep.png", png((32, 32), seed=1)),
               ("\u00e9" * 200 + ".png", png((32, 32), seed=2))]
    data = zip_bytes(members) if kind == "zip" else tar_bytes(members, fmt=tarfile.PAX_FORMAT)
    assert _accepted(layout, f"long.{kind}", data) == ["0000.png", "0001.png", "0002.png"]


# --- numbers of files ----------------------------------------------------------------------------


def test_three_thousand_tiny_files_alongside_a_few_photos(layout, monkeypatch):
    """3000 tiny non-image members are ignored: only the two photos are ever decoded."""
    members = [(f"junk/{i:04d}.txt", b"x") for i in range(3000)] + photos_with_captions(2, (32, 32))
    decoded = []
    load = dataset.load_image_or_none
    monkeypatch.setattr(dataset, "load_image_or_none", lambda path, name: decoded.append(name) or load(path, name))
    assert _accepted(layout, "many.zip", zip_bytes(members)) == ["0000.png", "0001.png"]
    assert sorted(decoded) == ["photo0.png", "photo1.png"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_three_thousand_tiny_images_exceed_max_images_before_decoding(layout, kind, monkeypatch):
    import preprocess.images as images

    decoded = []
    monkeypatch.setattr(images.Image, "open", lambda *a, **k: decoded.append(a) or (_ for _ in ()).throw(AssertionError("decoded")))
    tiny = png((2, 2))
    members = [(f"{i:04d}.png", tiny) for i in range(3000)]
    data = zip_bytes(members, zipfile.ZIP_STORED) if kind == "zip" else tar_bytes(members)
    message = _refused(layout, f"many.{kind}", data, "MAX_IMAGES")
    assert "more than 1000 images" in message and decoded == []


# --- bombs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_bombs(layout, kind):
    members = [("good.png", png()), ("huge.bmp", bytes(BOMB_BYTES))]
    data = zip_bytes(members) if kind == "zip" else tar_bytes(members, "w:gz")
    assert len(data) < BOMB_BYTES // 500
    _refused(layout, f"bomb.{kind}", data, "MAX_RATIO.*decompression bomb")


def test_zip_bomb_lying_about_its_size(layout, monkeypatch):
    """The header claims little; reading stops at MAX_MEMBER_BYTES whatever the header says."""
    import preprocess.intake as intake

    monkeypatch.setattr(intake, "MAX_MEMBER_BYTES", 1024**2)
    monkeypatch.setattr(intake, "_check_member_size", lambda *a: None)  # as if the header lied
    _refused(layout, "bomb.zip", zip_bytes([("big.png", bytes(2 * 1024**2))]), "MAX_MEMBER_BYTES")


def test_too_many_members(layout, monkeypatch):
    import preprocess.intake as intake

    monkeypatch.setattr(intake, "MAX_MEMBERS", 5)
    _refused(layout, "many.zip", zip_bytes([(f"{i}.txt", b"x") for i in range(6)]), "MAX_MEMBERS")


@pytest.mark.parametrize("mode", ["w:bz2", "w:xz"])
def test_tar_bz2_and_xz_bombs(layout, mode):
    _refused(layout, "bomb.tar", tar_bytes([("good.png", png()), ("huge.bmp", bytes(BOMB_BYTES))], mode),
             "MAX_RATIO.*decompression bomb")


def test_tar_gz_bomb_spread_over_many_members(layout):
    """No single member is large; together they expand far beyond MAX_RATIO."""
    members = [(f"z{i:03d}.bmp", bytes(1024**2)) for i in range(48)]
    _refused(layout, "spread.tar.gz", tar_bytes(members, "w:gz"), "MAX_RATIO")


def test_zip_bomb_with_lzma_and_bzip2(layout):
    for method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        _refused(layout, "bomb.zip", zip_bytes([("huge.bmp", bytes(BOMB_BYTES))], method), "MAX_RATIO")


@pytest.mark.parametrize("size", [(100_000, 100_000), (20_000, 5_000)])
def test_pixel_bombs_in_zip(layout, size):
    bomb = png_with_size(*size)
    assert len(bomb) < 100
    _refused(layout, "pixels.zip", zip_bytes([("good.png", png()), ("bomb.png", bomb)]), "bomb.png is .*MAX_IMAGE_PIXELS")


@pytest.mark.parametrize("size, color_type", [((10_000, 10_000), 2), ((100_000, 1), 6), ((30_000, 30_000), 0)])
def test_pixel_bombs_in_tar(layout, size, color_type):
    bomb = png_with_size(*size, color_type=color_type)
    assert len(bomb) < 100
    if size[0] * size[1] <= 80_000_000:  # under MAX_IMAGE_PIXELS: decodes (fails as truncated) and is skipped
        _refused(layout, "px.tar", tar_bytes([("bomb.png", bomb)]), "none readable")
    else:
        _refused(layout, "px.tar", tar_bytes([("good.png", png()), ("bomb.png", bomb)]), "bomb.png is .*MAX_IMAGE_PIXELS")


# --- broken content ------------------------------------------------------------------------------


def test_only_fake_and_truncated_images(layout):
    members = [("fake.png", FAKE_PNG), ("cut.png", truncated_png()), ("empty.jpg", b""), ("zero.webp", bytes(100))]
    _refused(layout, "bad.zip", zip_bytes(members), r"holds 4 image file\(s\), none readable")


def test_fake_and_truncated_images_are_skipped_next_to_good_ones(layout):
    members = [("fake.png", FAKE_PNG), ("cut.png", truncated_png()), ("good.png", png((32, 32)))]
    assert _accepted(layout, "mixed.zip", zip_bytes(members + [("captions.csv", caption_csv([("TOK", "good.png"), ("TOK", "fake.png"), ("TOK", "cut.png")]))])) == ["0000.png"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_empty_archives(layout, kind):
    _refused(layout, f"empty.{kind}", zip_bytes([]) if kind == "zip" else tar_bytes([]),
             rf"empty\.{kind} holds no image files")


@pytest.mark.parametrize("data", [b"", b"just some text\n" * 100, b"PK\x03\x04 broken zip" * 3, bytes(range(256)) * 8])
def test_not_an_archive(layout, data):
    _refused(layout, "upload", data, "is not a zip or tar archive")


def test_truncated_tar_gz(layout):
    data = tar_bytes([("a.png", png()), ("b.png", png((200, 200), seed=2))], "w:gz")
    _refused(layout, "in.tar.gz", data[: len(data) // 2], "corrupt or truncated|not a zip or tar")


@pytest.mark.parametrize("make", [
    lambda: zip_bytes([("dir/", b""), ("other/", b"")]),
    lambda: tar_bytes([("__MACOSX/._a.png", png()), (".hidden/b.png", png())]),
    lambda: zip_bytes([("captions.csv", caption_csv([]))]),
    lambda: zip_bytes([("readme.txt", b"hi"), ("data/x.json", b"{}")]),
], ids=["zip-only-dirs", "tar-only-hidden", "zip-only-csv", "zip-only-documents"])
def test_archives_without_usable_images(layout, make):
    _refused(layout, "empty.zip", make(), "holds no image files")


def test_corrupt_lzma_member_is_a_clear_error(layout):
    """Fuzzing finding: lzma.LZMAError escaped read_archive (neither naming input_images nor caught)."""
    good = zip_bytes([("0.png", png((32, 32)))], zipfile.ZIP_LZMA)
    header_end = 30 + len("0.png")
    broken = good[: header_end + 9] + bytes(b ^ 0x5A for b in good[header_end + 9 : header_end + 60]) + good[header_end + 60 :]
    _refused(layout, "lz.zip", broken, "corrupt or truncated zip")


def test_corrupt_tar_xz_is_a_clear_error(layout):
    data = tar_bytes(photos(2, (32, 32)), "w:xz")
    broken = data[:60] + bytes(b ^ 0xFF for b in data[60:400]) + data[400:]
    _refused(layout, "in.tar.xz", broken, "corrupt or truncated|not a zip or tar")


# --- caption csv mismatches ----------------------------------------------------------------------


@pytest.mark.parametrize("rows, match", [
    ([("TOK one", "photo0.png"), ("TOK two", "photo1.png"), ("TOK ghost", "missing.png")], "does not match"),
    ([("TOK one", "photo0.png")], "does not match"),
    ([("TOK one", "photo0.png"), ("TOK other", "photo0.png"), ("TOK two", "photo1.png")], "two different captions"),
    ([("", "photo0.png"), ("TOK two", "photo1.png")], "empty captions"),
])
def test_caption_csv_mismatches(layout, rows, match):
    _refused(layout, "cap.zip", zip_bytes(photos(2, (32, 32)) + [("captions.csv", caption_csv(rows))]), match)


@pytest.mark.parametrize("csv_bytes, match", [
    ("caption,image_file\nTOK \u00e9t\u00e9,photo0.png\n".encode("latin-1"), "not UTF-8"),
    (b"just,some\x00,junk\n\"unclosed", "caption csv"),
], ids=["latin-1", "garbage"])
def test_caption_csv_that_is_not_a_csv(layout, csv_bytes, match):
    _refused(layout, "cap.zip", zip_bytes(photos(1, (32, 32)) + [("captions.csv", csv_bytes)]), match)


def test_two_caption_csvs(layout):
    rows = caption_csv([("TOK", "photo0.png")])
    _refused(layout, "cap.zip", zip_bytes(photos(1, (32, 32)) + [("captions.csv", rows), ("more/captions.csv", rows)]),
             "two caption csv files")
