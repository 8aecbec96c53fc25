"""Training masks (L mode, 255 = what matters): whole image, CLIPSeg prompts, or mediapipe faces."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter

import weights

from .errors import PreprocessError

log = logging.getLogger(__name__)

FACE_MASK_FLOOR = 50  # background weight of face masks (as the reference): the rest of the picture still counts a little
FACE_BOX_MARGIN = 0.25  # face mesh runs on the detection box grown by this fraction on each side
FACE_MIN_CONFIDENCE = 0.1  # as the reference: a low bar keeps more faces (a false face only shifts weight)
CLIPSEG_FLOOR = 0.01  # the reference's bias: every pixel keeps a little weight (and so a little gradient)


def full_mask(image: Image.Image) -> Image.Image:
    """A mask saying the whole image matters."""
    return Image.new("L", image.size, 255)


def parse_prompts(mask_target_prompts: str | None) -> list[str]:
    """Comma-separated CLIPSeg prompts ("a dog, a ball"); empty/None means no prompt masking."""
    if mask_target_prompts is None or not mask_target_prompts.strip():
        return []
    prompts = [p.strip() for p in mask_target_prompts.split(",")]
    if not all(prompts):
        raise PreprocessError(f"mask_target_prompts: {mask_target_prompts!r} has an empty prompt between commas")
    return prompts


def check_temperature(temperature: float) -> float:
    """``clipseg_temperature`` must be a finite positive number."""
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise PreprocessError(f"clipseg_temperature must be a finite number above 0, not {temperature!r}")
    return value


class ClipSegMasker:
    """CLIPSegForImageSegmentation from the ``clipseg`` weight set, with the reference's formula.

    For each prompt: softmax over [prompt, empty prompt] of logits / T, the prompt's share plus
    CLIPSEG_FLOOR, divided by its maximum (so the most salient pixel is 255). Several comma-separated
    prompts: the pixelwise maximum of their masks (one prompt is exactly the reference).
    ``clipseg_temperature`` T is the documented blur: higher T, flatter masks.
    """

    def __init__(self, prompts: list[str], temperature: float = 1.0, device: str = "cpu"):
        from transformers import AutoTokenizer, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessorPil

        path = weights.resolve("clipseg")
        log.info("loading CLIPSeg from %s (%s) for prompts %s", path, weights.source("clipseg"), prompts)
        self.prompts = prompts
        self.temperature = check_temperature(temperature)
        self.device = torch.device(device)
        self.processor = CLIPSegProcessor(
            image_processor=ViTImageProcessorPil.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path)
        )
        self.model = CLIPSegForImageSegmentation.from_pretrained(path).to(self.device).eval()

    @torch.no_grad()
    def logits(self, image: Image.Image) -> torch.Tensor:
        """Raw CLIPSeg logits, one (H', W') map per prompt, then one for the empty prompt."""
        texts = [*self.prompts, ""]
        inputs = self.processor(
            text=texts, images=[image] * len(texts), padding="max_length", truncation=True, return_tensors="pt"
        ).to(self.device)
        logits = self.model(**inputs).logits.float().cpu()
        return logits.reshape(len(texts), *logits.shape[-2:])

    def probabilities(self, image: Image.Image) -> torch.Tensor:
        """The mask in [0, 1] at CLIPSeg's resolution (see the class docstring)."""
        logits = self.logits(image) / self.temperature
        empty = logits[-1]
        masks = []
        for prompt_logits in logits[:-1]:
            share = torch.softmax(torch.stack([prompt_logits, empty]), dim=0)[0]
            share = (share + CLIPSEG_FLOOR).clamp(0, 1)
            masks.append(share / share.max())
        return torch.stack(masks).amax(dim=0)

    def mask(self, image: Image.Image) -> Image.Image:
        """Soft mask of ``image`` at its size."""
        probs = self.probabilities(image)
        mask = Image.fromarray(np.rint(probs.numpy() * 255).astype(np.uint8), "L")
        return mask.resize(image.size, Image.Resampling.BILINEAR)

    def close(self) -> None:
        del self.model


class FaceMasker:
    """mediapipe face detection, then face mesh on each detected face: ONE mask covering every face.

    Each face becomes the convex hull of its 468 mesh landmarks (or its detection box when the mesh
    finds nothing there), slightly blurred, over a FACE_MASK_FLOOR background. No face: the whole image.
    """

    def __init__(self):
        import mediapipe as mp

        # Full-range model first (faces at any distance), the short-range one when it finds nothing.
        self._detectors = [
            mp.solutions.face_detection.FaceDetection(model_selection=m, min_detection_confidence=FACE_MIN_CONFIDENCE)
            for m in (1, 0)
        ]
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, min_detection_confidence=FACE_MIN_CONFIDENCE
        )

    def face_boxes(self, image: Image.Image) -> list[tuple[int, int, int, int]]:
        """Detected faces as pixel boxes (left, top, right, bottom), clipped to the image."""
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        detections = []
        for detector in self._detectors:
            detections = detector.process(rgb).detections or []
            if detections:
                break
        boxes = []
        for detection in detections:
            box = detection.location_data.relative_bounding_box
            left = max(0, int(box.xmin * image.width))
            top = max(0, int(box.ymin * image.height))
            right = min(image.width, int((box.xmin + box.width) * image.width))
            bottom = min(image.height, int((box.ymin + box.height) * image.height))
            if right > left and bottom > top:
                boxes.append((left, top, right, bottom))
        return boxes

    def mask(self, image: Image.Image, name: str = "image") -> Image.Image:
        """One L mask covering every face in ``image``."""
        boxes = self.face_boxes(image)
        if not boxes:
            log.info("use_face_detection_instead: no face found in %s; using a whole-image mask", name)
            return full_mask(image)
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        canvas = np.zeros((image.height, image.width), dtype=np.uint8)
        for box in boxes:
            cv2.fillPoly(canvas, [self._face_polygon(rgb, box)], 255)
        log.info("use_face_detection_instead: %d face(s) in %s", len(boxes), name)
        blur = max(1.0, min(image.size) / 200)
        mask = Image.fromarray(canvas, "L").filter(ImageFilter.GaussianBlur(blur))
        floor = np.full(canvas.shape, FACE_MASK_FLOOR, dtype=np.uint8)
        return Image.fromarray(np.maximum(np.asarray(mask), floor), "L")

    def _face_polygon(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Convex hull of the face-mesh landmarks inside the grown box; the box itself if the mesh fails."""
        height, width = rgb.shape[:2]
        left, top, right, bottom = box
        grow_x, grow_y = int((right - left) * FACE_BOX_MARGIN), int((bottom - top) * FACE_BOX_MARGIN)
        x0, y0 = max(0, left - grow_x), max(0, top - grow_y)
        x1, y1 = min(width, right + grow_x), min(height, bottom + grow_y)
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        faces = self._mesh.process(crop).multi_face_landmarks
        if not faces:
            return np.array([[left, top], [right, top], [right, bottom], [left, bottom]], dtype=np.int32)
        points = np.array(
            [[x0 + lm.x * (x1 - x0), y0 + lm.y * (y1 - y0)] for lm in faces[0].landmark], dtype=np.float32
        )
        return cv2.convexHull(np.rint(points).astype(np.int32)).reshape(-1, 2)

    def close(self) -> None:
        for detector in self._detectors:
            detector.close()
        self._mesh.close()
