"""Captions: BLIP for images without one, the caption prefix, and the caption csv."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable

import torch
from PIL import Image

import weights
from sdxl.trigger import contains_word, substitute

from .errors import PreprocessError

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 40
NUM_BEAMS = 3


class Captioner:
    """BlipForConditionalGeneration from the ``blip`` weight set, decoding deterministically (beam search)."""

    def __init__(self, device: str = "cpu"):
        from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

        path = weights.resolve("blip")
        log.info("loading BLIP from %s (%s)", path, weights.source("blip"))
        self.device = torch.device(device)
        # The PIL image processor needs no torchvision; it reads both the real and the tiny layouts.
        self.processor = BlipProcessor(
            image_processor=BlipImageProcessorPil.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path)
        )
        self.model = BlipForConditionalGeneration.from_pretrained(path).to(self.device).eval()

    @torch.no_grad()
    def caption(self, image: Image.Image, seed: int = 0) -> str:
        """BLIP's caption of ``image``; the same image and seed give the same caption."""
        torch.manual_seed(seed)
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        out = self.model.generate(
            **inputs, do_sample=False, num_beams=NUM_BEAMS, max_new_tokens=MAX_NEW_TOKENS, repetition_penalty=1.2
        )
        return self.processor.decode(out[0], skip_special_tokens=True).strip()

    def close(self) -> None:
        del self.model


def compose(prefix: str, caption: str, token: str) -> str:
    """``"<prefix>, <caption>"``; the token, lowercased by BLIP's uncased tokenizer, gets its spelling back."""
    caption = substitute(caption.strip(), token.lower(), token)
    prefix = prefix.strip()
    if not caption:
        return prefix
    if not prefix:
        return caption
    return f"{prefix}, {caption}"


def user_caption(prefix: str, caption: str, token: str) -> str:
    """A caption from the csv: used as written when it names the token (a whole word, exact spelling: the
    rule of ``sdxl.trigger``), else prefixed like a BLIP caption."""
    if contains_word(caption, token):
        return caption.strip()
    return compose(prefix, caption, token)


def parse_caption_csv(text: str, csv_name: str) -> dict[str, str]:
    """Map image base name -> caption from a csv with columns ``caption`` (or ``captions``) and ``image_file``."""
    reader = csv.DictReader(io.StringIO(text))
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or ()}
    caption_col = columns.get("caption") or columns.get("captions")
    file_col = columns.get("image_file")
    if caption_col is None or file_col is None:
        raise PreprocessError(
            f"input_images: caption csv {csv_name!r} needs the columns caption,image_file; it has {', '.join(columns) or 'none'}"
        )
    captions: dict[str, str] = {}
    try:
        for row in reader:
            name = (row.get(file_col) or "").strip().replace("\\", "/").rsplit("/", 1)[-1]
            caption = (row.get(caption_col) or "").strip()
            if not name:
                continue
            if name in captions and captions[name] != caption:
                raise PreprocessError(f"input_images: caption csv {csv_name!r} gives {name!r} two different captions")
            captions[name] = caption
    except csv.Error as e:
        raise PreprocessError(f"input_images: caption csv {csv_name!r} is not valid csv ({e})") from e
    return captions


def check_caption_join(captions: dict[str, str], image_names: Iterable[str], csv_name: str) -> None:
    """Every image has a row and every row an image, by base name; else an error listing the strays."""
    names = set(image_names)
    no_caption = sorted(names - captions.keys())
    no_image = sorted(captions.keys() - names)
    problems = []
    if no_caption:
        problems.append(f"images without a caption row: {_listing(no_caption)}")
    if no_image:
        problems.append(f"caption rows naming no image in the archive: {_listing(no_image)}")
    if problems:
        raise PreprocessError(f"input_images: caption csv {csv_name!r} does not match the images; " + "; ".join(problems))
    empty = sorted(name for name, caption in captions.items() if not caption)
    if empty:
        raise PreprocessError(f"input_images: caption csv {csv_name!r} has empty captions for {_listing(empty)}")


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
