"""The tiny BLIP / CLIPSeg / Swin2SR load through weights.resolve and do their job in prepare."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

import weights
from preprocess import prepare
from preprocess.caption import Captioner, compose
from preprocess.masks import ClipSegMasker
from preprocess.upscale import Upscaler


@pytest.mark.parametrize("name,model_class", [
    ("blip", "BlipForConditionalGeneration"),
    ("clipseg", "CLIPSegForImageSegmentation"),
    ("swin2sr", "Swin2SRForImageSuperResolution"),
])
def test_tiny_sets_are_the_real_classes(name, model_class):
    import transformers

    path = weights.resolve(name)
    assert list(path.glob("*.safetensors"))
    model = getattr(transformers, model_class).from_pretrained(path)
    assert type(model).__name__ == model_class


def test_blip_caption_is_deterministic(kit):
    captioner = Captioner()
    image = kit.picture((50, 40), seed=7)
    first = captioner.caption(image, seed=1)
    assert first and first == captioner.caption(image, seed=1)


def test_compose_keeps_the_token():
    assert compose("a photo of SKS", "a man with a hat", "SKS") == "a photo of SKS, a man with a hat"
    # BLIP's uncased tokenizer lowercases; the token's spelling is restored on whole words only
    assert compose("a photo of SKS", "sks near a sksfoo", "SKS") == "a photo of SKS, SKS near a sksfoo"


def test_prepare_blip_captions_prefixed_and_token_intact(tmp_path, kit):
    archive = kit.make_zip(tmp_path / "in.zip", {"a.png": kit.png(seed=1), "b.png": kit.png(seed=2)})
    kwargs = dict(resolution=32, caption_prefix="a photo of Zq9TOK", token_string="Zq9TOK", seed=5)
    rows = kit.read_rows(prepare(archive, tmp_path / "one", **kwargs))
    again = kit.read_rows(prepare(archive, tmp_path / "two", **kwargs))
    assert rows == again
    for row in rows:
        assert row["caption"].startswith("a photo of Zq9TOK, ")
        assert len(row["caption"]) > len("a photo of Zq9TOK, ")


def test_clipseg_mask_shape_and_temperature(kit):
    image = kit.picture((70, 50), seed=3)
    mask = ClipSegMasker(["a toy"], temperature=1.0).mask(image)
    assert (mask.mode, mask.size) == ("L", (70, 50))
    soft = ClipSegMasker(["a toy"], temperature=50.0).mask(image)
    softest = ClipSegMasker(["a toy"], temperature=1e6).mask(image)
    spread = lambda m: np.asarray(m, np.float64).std()  # noqa: E731
    assert spread(softest) < spread(soft) < spread(mask)
    assert spread(softest) < 1  # all values alike: every pixel weighs the same


def test_clipseg_in_prepare(tmp_path, kit):
    archive = kit.make_zip(tmp_path / "in.zip", {"a.png": kit.png((80, 60), seed=1), "caption.csv": kit.caption_csv([("TOK", "a.png")])})
    out = prepare(archive, tmp_path / "out", resolution=32, mask_target_prompts="a toy, a dog")
    mask = Image.open(out / "masks" / "0000.png")
    assert (mask.mode, mask.size) == ("L", (32, 32))
    assert np.asarray(mask).min() < 255  # not the whole-image mask


def test_swin2sr_upscales_x4(kit):
    upscaler = Upscaler()
    out = upscaler.upscale(kit.picture((20, 13), seed=4))
    assert (out.mode, out.size) == ("RGB", (80, 52))


def test_small_images_are_upscaled_before_resizing(tmp_path, kit, monkeypatch, caplog):
    seen = []
    original = Upscaler.upscale

    def spy(self, image):
        out = original(self, image)
        seen.append((image.size, out.size))
        return out

    monkeypatch.setattr(Upscaler, "upscale", spy)
    archive = kit.make_zip(
        tmp_path / "in.zip",
        {
            "small.png": kit.png((24, 30), seed=1),
            "big.png": kit.png((80, 72)),
            "caption.csv": kit.caption_csv([("TOK small", "small.png"), ("TOK big", "big.png")]),
        },
    )
    with caplog.at_level(logging.INFO, logger="preprocess"):
        out = prepare(archive, tmp_path / "out", resolution=64)
    assert seen == [((24, 24), (96, 96))]  # rows: big.png then small.png  # only the small one, after its square crop
    assert [r["caption"] for r in kit.read_rows(out)] == ["TOK big", "TOK small"]
    for name in ("0000.png", "0001.png"):
        assert Image.open(out / "images" / name).size == (64, 64)
    assert "Swin2SR" in caplog.text
