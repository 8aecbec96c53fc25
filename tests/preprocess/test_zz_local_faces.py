"""Face masks on the real zeke photos (mediapipe), and the square crop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import preprocess.dataset as dataset
from preprocess import prepare
from preprocess.crop import center_of_mass, crop_pair, square_box
from preprocess.masks import FACE_MASK_FLOOR, FaceMasker
from pathlib import Path as _P


def _box_means(mask: Image.Image, box) -> tuple[float, float]:
    values = np.asarray(mask, np.float64)
    inside = np.zeros(values.shape, bool)
    left, top, right, bottom = box
    inside[top:bottom, left:right] = True
    return values[inside].mean(), values[~inside].mean()


@pytest.fixture
def zeke():
    return _P("/work/shared/datasets/zeke")


@pytest.fixture(scope="module")
def masker():
    m = FaceMasker()
    yield m
    m.close()


@pytest.mark.parametrize("index", [0, 1, 2])
def test_face_mask_covers_the_detected_face(zeke, masker, index):
    image = Image.open(zeke / f"{index}.src.jpg").convert("RGB")
    boxes = masker.face_boxes(image)
    assert len(boxes) == 1
    mask = masker.mask(image)
    assert (mask.mode, mask.size) == ("L", image.size)
    inside, outside = _box_means(mask, boxes[0])
    assert inside > 150 and outside < 90 and inside - outside > 90  # floor 50 outside
    assert np.asarray(mask).min() == FACE_MASK_FLOOR


def test_two_faces_make_one_mask_covering_both(zeke, masker):
    left, right = (Image.open(zeke / f"{i}.src.jpg").convert("RGB") for i in (0, 1))
    both = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    boxes = masker.face_boxes(both)
    assert len(boxes) == 2
    mask = masker.mask(both)
    assert mask.size == both.size
    for box in boxes:
        inside, outside = _box_means(mask, box)
        assert inside > 150 and inside - outside > 80
    assert {box[0] < left.width for box in boxes} == {True, False}  # one face in each half


def test_prepare_with_faces_one_mask_per_image(tmp_path, zeke, kit):
    two = Image.new("RGB", (1024, 512))
    two.paste(Image.open(zeke / "0.src.jpg"), (0, 0))
    two.paste(Image.open(zeke / "1.src.jpg"), (512, 0))
    archive = kit.make_zip(
        tmp_path / "in.zip",
        {
            "a_one.jpg": (zeke / "2.src.jpg").read_bytes(),
            "b_two.png": kit.encode(two, "PNG"),
            "c_noise.png": kit.png((64, 64)),
            "caption.csv": kit.caption_csv([("TOK", "a_one.jpg"), ("two TOK", "b_two.png"), ("no TOK", "c_noise.png")]),
        },
    )
    out = prepare(archive, tmp_path / "out", resolution=64, use_face_detection_instead=True, mask_target_prompts="ignored")
    rows = kit.read_rows(out)
    assert len(rows) == 3 and len(list((out / "masks").iterdir())) == 3
    masks = [np.asarray(Image.open(out / r["mask"])) for r in rows]
    assert masks[0].max() == 255 and masks[0].min() == FACE_MASK_FLOOR
    assert masks[2].min() == 255  # no face: whole image


def test_center_of_mass_and_square_box():
    mask = Image.new("L", (200, 100), 0)
    mask.paste(255, (150, 40, 170, 60))
    cx, cy = center_of_mass(mask)
    assert abs(cx - 159.5) < 0.01 and abs(cy - 49.5) < 0.01
    assert center_of_mass(Image.new("L", (200, 100), 77)) == (100, 50)
    assert square_box((200, 100), (cx, cy)) == (100, 0, 200, 100)  # clamped at the right edge
    assert square_box((200, 100), (100, 50)) == (50, 0, 150, 100)
    assert square_box((100, 300), (50, 10)) == (0, 0, 100, 100)


def test_crop_pair_moves_towards_the_mask():
    image = Image.new("RGB", (300, 100))
    mask = Image.new("L", (300, 100), 0)
    mask.paste(255, (10, 30, 40, 60))
    salient_image, salient_mask = crop_pair(image, mask, salience=True)
    centred_image, centred_mask = crop_pair(image, mask, salience=False)
    assert salient_image.size == salient_mask.size == centred_image.size == (100, 100)
    assert np.asarray(salient_mask).max() == 255  # the salient part is kept
    assert np.asarray(centred_mask).max() == 0  # a centred crop loses it


@pytest.mark.parametrize("salience", [True, False])
@pytest.mark.parametrize("resolution", [32, 48])
def test_prepare_crop_follows_the_mask_and_resolution_sets_size(tmp_path, kit, monkeypatch, salience, resolution):
    # left half black, right half white; the mask says the right third matters
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (150, 0, 300, 100))

    def right_third(im):
        mask = Image.new("L", im.size, 0)
        mask.paste(255, (im.width * 2 // 3, 0, im.width, im.height))
        return mask

    monkeypatch.setattr(dataset, "full_mask", right_third)
    archive = kit.make_zip(tmp_path / "in.zip", {"wide.png": kit.encode(image), "captions.csv": kit.caption_csv([("TOK", "wide.png")])})
    out = prepare(archive, tmp_path / "out", resolution=resolution, crop_based_on_salience=salience)
    result = np.asarray(Image.open(out / "images" / "0000.png"))
    mask = np.asarray(Image.open(out / "masks" / "0000.png"))
    assert result.shape == (resolution, resolution, 3) and mask.shape == (resolution, resolution)
    if salience:
        assert result.min() > 240 and mask.mean() > 100  # all white: the crop moved right, mask cropped alike
    else:
        assert result[:, :4].max() < 15 and result[:, -4:].min() > 240  # centred: half black, half white
