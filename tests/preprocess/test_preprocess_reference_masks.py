"""Masks and micro-conditioning as the reference trainer makes them (replicate/cog-sdxl preprocess.py):
CLIPSeg's formula, the face detector's confidence, the original size and crop written for SDXL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import weights
from preprocess import prepare
from preprocess.masks import CLIPSEG_FLOOR, ClipSegMasker, FaceMasker


def reference_clipseg(image: Image.Image, prompt: str, temperature: float) -> np.ndarray:
    """The reference's clipseg_mask_generator for one image, written from its source (the oracle)."""
    from transformers import AutoTokenizer, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessorPil

    path = weights.resolve("clipseg")
    processor = CLIPSegProcessor(image_processor=ViTImageProcessorPil.from_pretrained(path),
                                 tokenizer=AutoTokenizer.from_pretrained(path))
    model = CLIPSegForImageSegmentation.from_pretrained(path).eval()
    inputs = processor(text=[prompt, ""], images=[image] * 2, padding="max_length", truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    probs = torch.nn.functional.softmax(logits / temperature, dim=0)[0]
    probs = (probs + 0.01).clamp_(0, 1)
    probs = 255 * probs / probs.max()
    return np.rint(probs.numpy())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_clipseg_mask_is_the_references_formula(kit, temperature):
    image = kit.picture((70, 50), seed=3)
    masker = ClipSegMasker(["a toy"], temperature=temperature)
    ours = masker.probabilities(image).numpy() * 255
    np.testing.assert_allclose(ours, reference_clipseg(image, "a toy", temperature), atol=0.5 + 1e-4)
    assert masker.mask(image).size == image.size


def test_clipseg_floor_leaves_every_pixel_some_weight_and_temperature_flattens(kit):
    image = kit.picture((70, 50), seed=3)
    sharp = ClipSegMasker(["a toy"], temperature=0.2).probabilities(image)
    assert sharp.max() == 1.0 and sharp.min() >= CLIPSEG_FLOOR / (1 + CLIPSEG_FLOOR) - 1e-6
    flat = ClipSegMasker(["a toy"], temperature=1e6).probabilities(image)
    assert flat.std() < 1e-3 < sharp.std()  # an infinitely blurry mask weighs every pixel alike


def test_face_detection_keeps_faces_down_to_the_references_confidence(monkeypatch):
    import mediapipe as mp

    seen = []
    real = mp.solutions.face_detection.FaceDetection

    def spy(**kwargs):
        seen.append(kwargs["min_detection_confidence"])
        return real(**kwargs)

    monkeypatch.setattr(mp.solutions.face_detection, "FaceDetection", spy)
    FaceMasker().close()
    assert seen and set(seen) == {0.1}


def test_prepare_writes_original_size_and_crop_for_sdxl_conditioning(tmp_path, kit):
    """A 96x64 photo at resolution 32: original (64, 96); the centred square is 64 wide at x = 16, and
    at the scale where it is 32 wide it starts at x = 8. The trainer conditions on these numbers."""
    from training.data import PreparedDataset

    archive = kit.make_zip(tmp_path / "in.zip", {"a.png": kit.png((96, 64), seed=2),
                                                 "caption.csv": kit.caption_csv([("TOK", "a.png")])})
    out = prepare(archive, tmp_path / "out", resolution=32, crop_based_on_salience=False)
    (row,) = kit.read_rows(out)
    assert [row[c] for c in ("original_height", "original_width", "crop_top", "crop_left")] == ["64", "96", "0", "8"]
    assert PreparedDataset(out, 32).time_ids(0).tolist() == [64, 96, 0, 8, 32, 32]
