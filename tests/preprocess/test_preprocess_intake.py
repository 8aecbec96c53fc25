"""Archive intake and image decoding: kinds, layouts, formats, modes, EXIF, caption csv."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from preprocess import PreprocessError, prepare
from preprocess.images import load_image_or_none
from preprocess.intake import read_archive


def _names(archive, tmp_path, filetype="infer"):
    return [m.name for m in read_archive(archive, tmp_path / "staging", filetype).images]


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tar.bz2"])
def test_archive_kinds_with_and_without_extension(tmp_path, kit, kind):
    members = {"a.png": kit.png(seed=1), "b.png": kit.png(seed=2)}
    path = tmp_path / f"images.{kind}"
    if kind == "zip":
        kit.make_zip(path, members)
    else:
        kit.make_tar(path, members, mode={"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2"}[kind])
    assert _names(path, tmp_path) == ["a.png", "b.png"]
    bare = path.rename(tmp_path / "upload")  # a URL without a file extension
    assert _names(bare, tmp_path) == ["a.png", "b.png"]
    expected = "zip" if kind == "zip" else "tar"
    assert _names(bare, tmp_path, expected) == ["a.png", "b.png"]
    with pytest.raises(PreprocessError, match="input_images_filetype"):
        read_archive(bare, tmp_path / "staging", "tar" if expected == "zip" else "zip")


def test_nested_folders_same_base_names_and_ignored_members(tmp_path, kit):
    archive = kit.make_zip(
        tmp_path / "in.zip",
        {
            "top.jpg": kit.encode(kit.picture(seed=1), "JPEG"),
            "one/two/three/deep.png": kit.png(seed=2),
            "left/same.png": kit.png(seed=3),
            "right/same.png": kit.png(seed=4),
            "__MACOSX/left/._same.png": b"\x00\x05\x16\x07 resource fork",
            ".hidden.png": kit.png(seed=5),
            "folder/.DS_Store": b"junk",
            ".git/objects/x.png": kit.png(seed=6),
            "notes.txt": b"not an image",
            # one row per base name: the two same.png share theirs (BLIP is covered in test_preprocess_models)
            "captions.csv": kit.caption_csv([("TOK top", "top.jpg"), ("TOK deep", "deep.png"), ("TOK same", "same.png")]),
        },
    )
    assert _names(archive, tmp_path) == ["left/same.png", "one/two/three/deep.png", "right/same.png", "top.jpg"]
    out = prepare(archive, tmp_path / "out", resolution=32)
    rows = kit.read_rows(out)
    assert [r["image"] for r in rows] == [f"images/{i:04d}.png" for i in range(4)]
    assert [r["mask"] for r in rows] == [f"masks/{i:04d}.png" for i in range(4)]
    for row in rows:
        image, mask = Image.open(out / row["image"]), Image.open(out / row["mask"])
        assert (image.mode, image.size, mask.mode, mask.size) == ("RGB", (32, 32), "L", (32, 32))
        assert np.asarray(mask).min() == 255  # no mask option: the whole image matters
    # the two same-named images are both there, and differ
    assert not np.array_equal(np.asarray(Image.open(out / rows[0]["image"])), np.asarray(Image.open(out / rows[2]["image"])))
    assert not (out / ".intake").exists()


def test_output_is_deterministic_and_rerun_replaces_it(tmp_path, kit):
    archive = kit.make_tar(tmp_path / "in.tar", {"b.png": kit.png(seed=2), "a.png": kit.png(seed=1)})
    first = prepare(archive, tmp_path / "one", resolution=32, seed=3)
    second = prepare(archive, tmp_path / "two", resolution=32, seed=3)
    assert (first / "captions.csv").read_text() == (second / "captions.csv").read_text()
    for name in ("images/0000.png", "images/0001.png", "masks/0001.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    small = kit.make_tar(tmp_path / "small.tar", {"c.png": kit.png(seed=3)})
    prepare(small, first, resolution=32)
    assert sorted(p.name for p in (first / "images").iterdir()) == ["0000.png"]


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif")])
def test_image_formats(tmp_path, kit, fmt, suffix):
    path = tmp_path / f"x.{suffix}"
    path.write_bytes(kit.encode(kit.picture((40, 30)), fmt))
    image = load_image_or_none(path, path.name)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_exif_orientation_is_applied(tmp_path):
    # Stored landscape, left half red, right half blue; orientation 6 = display rotated 90 degrees clockwise.
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)
    stored[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, "JPEG", exif=exif, quality=95)
    upright = np.asarray(load_image_or_none(path, "phone.jpg"))
    assert upright.shape == (60, 40, 3)  # portrait now
    assert upright[5, 20, 0] > 200 and upright[5, 20, 2] < 60  # red on top after a clockwise turn
    assert upright[55, 20, 2] > 200 and upright[55, 20, 0] < 60  # blue at the bottom


def test_modes_are_converted_to_rgb(tmp_path, kit):
    cases = {}
    cases["cmyk.jpg"] = kit.encode(kit.picture(mode="CMYK"), "JPEG")
    sixteen = Image.fromarray(np.full((20, 30), 32896, np.uint16))  # mode I;16
    cases["sixteen.png"] = kit.encode(sixteen, "PNG")
    rgba = Image.new("RGBA", (30, 20), (255, 0, 0, 0))  # fully transparent red
    cases["rgba.png"] = kit.encode(rgba, "PNG")
    cases["la.png"] = kit.encode(Image.new("LA", (30, 20), (10, 255)), "PNG")
    cases["p.png"] = kit.encode(kit.picture().convert("P"), "PNG")
    cases["p.gif"] = kit.encode(kit.picture().convert("P"), "GIF", transparency=0)
    cases["one_bit.bmp"] = kit.encode(kit.picture().convert("1"), "BMP")
    got = {}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        image = load_image_or_none(path, name)
        assert image.mode == "RGB", name
        got[name] = np.asarray(image)
    assert abs(int(got["sixteen.png"].mean()) - 128) <= 1  # scaled from 16 bits, not clipped to white
    assert got["rgba.png"].min() == 255  # transparency composited onto white
    assert got["la.png"].max() == 10


def test_truncated_and_fake_images_are_skipped_with_a_log_line(tmp_path, kit, caplog):
    good = kit.png((64, 48), seed=1)
    archive = kit.make_zip(
        tmp_path / "in.zip",
        {"good.png": good, "truncated.png": good[: len(good) // 2], "fake.jpg": b"hello, world", "caption.csv": kit.caption_csv(
            [("TOK", "good.png"), ("TOK", "truncated.png"), ("TOK", "fake.jpg")]
        )},
    )
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        out = prepare(archive, tmp_path / "out", resolution=32)
    assert len(kit.read_rows(out)) == 1
    assert "truncated.png" in caplog.text and "fake.jpg" in caplog.text
    bad = kit.make_zip(tmp_path / "bad.zip", {"truncated.png": good[:100], "fake.jpg": b"hello"})
    with pytest.raises(PreprocessError, match=r"input_images: bad\.zip holds 2 image file\(s\), none readable"):
        prepare(bad, tmp_path / "out2", resolution=32)


def test_caption_csv_joined_by_name(tmp_path, kit):
    archive = kit.make_zip(
        tmp_path / "in.zip",
        {
            "photos/b.png": kit.png(seed=2),
            "photos/a.png": kit.png(seed=1),
            "photos/c.png": kit.png(seed=3),
            # listed in another order than the images, paths in the csv reduced to base names
            "my_captions.csv": kit.caption_csv(
                [("TOK on a car", "c.png"), ("a photo of smiling TOK, in an office", "x/a.png"), ("a red toy", "b.png")]
            ),
        },
    )
    out = prepare(archive, tmp_path / "out", resolution=32)
    assert [r["caption"] for r in kit.read_rows(out)] == [
        "a photo of smiling TOK, in an office",  # a.png
        "a photo of TOK, a red toy",  # b.png: no token, so the prefix is added
        "TOK on a car",  # c.png
    ]


def test_caption_csv_mismatch_lists_the_names(tmp_path, kit):
    archive = kit.make_zip(
        tmp_path / "in.zip",
        {
            "a.png": kit.png(seed=1),
            "lonely.png": kit.png(seed=2),
            "caption.csv": kit.caption_csv([("TOK", "a.png"), ("TOK again", "ghost.jpg")]),
        },
    )
    with pytest.raises(PreprocessError) as err:
        prepare(archive, tmp_path / "out", resolution=32)
    message = str(err.value)
    assert message.startswith("input_images:") and "'lonely.png'" in message and "'ghost.jpg'" in message
    assert not (tmp_path / "out" / "images").exists()


def test_caption_csv_without_the_columns(tmp_path, kit):
    archive = kit.make_zip(tmp_path / "in.zip", {"a.png": kit.png(), "captions.csv": b"text,file\nTOK,a.png\n"})
    with pytest.raises(PreprocessError, match="caption,image_file"):
        prepare(archive, tmp_path / "out", resolution=32)


@pytest.mark.parametrize(
    "kwargs,named",
    [
        ({"resolution": 30}, "resolution"),
        ({"resolution": 0}, "resolution"),
        ({"caption_prefix": "a photo of someone"}, "caption_prefix"),
        ({"token_string": ""}, "token_string"),
        ({"clipseg_temperature": 0}, "clipseg_temperature"),
        ({"clipseg_temperature": float("nan")}, "clipseg_temperature"),
        ({"mask_target_prompts": "a dog, , a cat"}, "mask_target_prompts"),
        ({"input_images_filetype": "rar"}, "input_images_filetype"),
        ({"device": "not-a-device"}, "device"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kit, kwargs, named):
    archive = kit.make_zip(tmp_path / "in.zip", {"a.png": kit.png()})
    with pytest.raises(PreprocessError, match=named):
        prepare(archive, tmp_path / "out", **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(PreprocessError, match="input_images: .* does not exist"):
        prepare(tmp_path / "nope.zip", tmp_path / "out")


def test_archive_stream_is_read_not_extracted(tmp_path, kit):
    """A member is staged under our own name: the staging folder holds only NNNNN files."""
    archive = kit.make_tar(tmp_path / "in.tar", {"dir/sub/pic.png": kit.png()})
    intake = read_archive(archive, tmp_path / "staging")
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["00000"]
    assert Image.open(io.BytesIO(intake.images[0].path.read_bytes())).size == (64, 48)
