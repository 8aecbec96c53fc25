"""``prepare``: from the user's archive to a training dataset of square images, masks and captions."""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from PIL import Image

from . import caption as captions_mod
from .crop import crop_box, shrink
from .errors import PreprocessError
from .images import load_image_or_none
from training import inputs

from .intake import Member, read_archive
from .masks import ClipSegMasker, FaceMasker, check_temperature, full_mask, parse_prompts
from .upscale import Upscaler, resize

log = logging.getLogger(__name__)

ANALYSIS_SIDE = 768  # images are kept at least this large (shorter side) for face detection and CLIPSeg
STAGING = ".intake"  # inside out_dir, removed when done
# SDXL micro-conditioning columns (read by training.data): the photo's size before any resize, and
# the crop's top-left corner in the photo scaled so its shorter side is `resolution` (as diffusers'
# and kohya's SDXL trainers compute them).
CSV_HEADER = ("image", "mask", "caption", "original_height", "original_width", "crop_top", "crop_left")


@dataclass
class WorkingImage:
    """One training image on its way through ``prepare`` (decoded, then masked, captioned and cropped)."""

    name: str  # member name inside the archive
    image: Image.Image
    mask: Image.Image | None = None
    caption: str | None = None
    original_size: tuple[int, int] = (0, 0)  # (height, width) of the decoded photo, before any resize
    crop_top_left: tuple[int, int] = (0, 0)  # (top, left) at the scale where the shorter side is `resolution`


def prepare(
    input_images: Path,
    out_dir: Path,
    *,
    resolution: int = inputs.RESOLUTION,
    caption_prefix: str = inputs.CAPTION_PREFIX,
    token_string: str = inputs.TOKEN_STRING,
    mask_target_prompts: str | None = inputs.MASK_TARGET_PROMPTS,
    crop_based_on_salience: bool = inputs.CROP_BASED_ON_SALIENCE,
    use_face_detection_instead: bool = inputs.USE_FACE_DETECTION_INSTEAD,
    clipseg_temperature: float = inputs.CLIPSEG_TEMPERATURE,
    input_images_filetype: str = inputs.INPUT_IMAGES_FILETYPE,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Turn the archive ``input_images`` into ``out_dir/{images,masks}/NNNN.png`` and ``out_dir/captions.csv``.

    Images are RGB ``resolution`` squares, masks L squares (255 = what matters), the csv has the
    columns image,mask,caption with paths relative to ``out_dir``, one row per image in archive-name
    order. Bad inputs raise PreprocessError naming the input, checked before any model is loaded.
    """
    input_images, out_dir = Path(input_images), Path(out_dir)
    prompts = _check_arguments(
        resolution, caption_prefix, token_string, mask_target_prompts, clipseg_temperature, input_images_filetype, device
    )
    _clean_outputs(out_dir)
    staging = out_dir / STAGING
    try:
        intake = read_archive(input_images, staging, input_images_filetype)
        csv_captions = captions_from_csv(intake.caption_csv, intake.caption_csv_name, intake.images)
        examples = decode_images(intake.images, input_images, resolution)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if use_face_detection_instead and prompts:
        log.info("use_face_detection_instead is set: mask_target_prompts %r are not used", mask_target_prompts)
    _add_masks(examples, prompts, use_face_detection_instead, clipseg_temperature, device)
    _add_captions(examples, csv_captions, caption_prefix, token_string, seed, device)
    squares = _crop_all(examples, resolution, crop_based_on_salience, device)
    _write(out_dir, squares)
    log.info("prepared %d training images at %dx%d in %s", len(squares), resolution, resolution, out_dir)
    return out_dir


def _check_arguments(resolution, caption_prefix, token_string, mask_target_prompts, temperature, filetype, device):
    """Validate every cheap-to-check argument; return the parsed CLIPSeg prompts."""
    for name, problem in (
        ("resolution", inputs.resolution_problem(resolution)),
        ("token_string", inputs.token_string_problem(token_string)),
        ("caption_prefix", inputs.caption_prefix_problem(caption_prefix, token_string)),
    ):
        if problem:
            raise PreprocessError(f"{name} {problem}")
    if filetype not in inputs.FILETYPES:
        raise PreprocessError(f"input_images_filetype must be one of {', '.join(inputs.FILETYPES)}, not {filetype!r}")
    check_temperature(temperature)
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PreprocessError(f"device {device!r} is not a torch device ({e})") from e
    return parse_prompts(mask_target_prompts)


def _clean_outputs(out_dir: Path) -> None:
    """Create ``out_dir`` and remove what an earlier run of ``prepare`` left there (only our own names)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks", STAGING):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    (out_dir / "captions.csv").unlink(missing_ok=True)


def captions_from_csv(text: str | None, csv_name: str | None, members: list[Member]) -> dict[str, str] | None:
    """The archive's caption csv as {image basename: caption}, checked against the image members; None without one."""
    if text is None:
        return None
    captions = captions_mod.parse_caption_csv(text, csv_name)
    captions_mod.check_caption_join(captions, (m.basename for m in members), csv_name)
    log.info("input_images: using the captions of %s", csv_name)
    return captions


def decode_images(members: list[Member], archive: Path, resolution: int) -> list[WorkingImage]:
    """Decode every image member (skipping unreadable ones); shrink large ones to save memory.

    The shorter side is kept at ``max(resolution, ANALYSIS_SIDE)`` at least: the final crop only needs
    ``resolution``, face detection wants a little more.
    """
    examples = []
    for member in members:
        image = load_image_or_none(member.path, member.name)
        if image is not None:
            original_size = (image.height, image.width)
            examples.append(WorkingImage(member.name, shrink(image, max(resolution, ANALYSIS_SIDE)),
                                         original_size=original_size))
    if not examples:
        found = f"{len(members)} image file(s), none readable" if members else "no image files (png, jpg, jpeg, webp, bmp, gif)"
        raise PreprocessError(f"input_images: {archive.name} holds {found}")
    return examples


def _add_masks(examples, prompts, faces: bool, temperature: float, device: str) -> None:
    if faces:
        masker = FaceMasker()
        try:
            for ex in examples:
                ex.mask = masker.mask(ex.image, ex.name)
        finally:
            masker.close()
    elif prompts:
        clipseg = ClipSegMasker(prompts, temperature, device)
        try:
            for ex in examples:
                ex.mask = clipseg.mask(ex.image)
        finally:
            clipseg.close()
    else:
        for ex in examples:
            ex.mask = full_mask(ex.image)


def _add_captions(examples, csv_captions, prefix: str, token: str, seed: int, device: str) -> None:
    if csv_captions is not None:
        for ex in examples:
            ex.caption = captions_mod.user_caption(prefix, csv_captions[PurePosixPath(ex.name).name], token)
        return
    captioner = captions_mod.Captioner(device)
    for ex in examples:
        ex.caption = captions_mod.compose(prefix, captioner.caption(ex.image, seed), token)
        log.info("caption for %s: %s", ex.name, ex.caption)
    captioner.close()


def _crop_all(examples, resolution: int, salience: bool, device: str) -> list[WorkingImage]:
    """Square-crop image and mask together, upscale small images with Swin2SR, resize to ``resolution``."""
    squares = []
    for ex in examples:
        left, top, right, _ = box = crop_box(ex.image, ex.mask, salience=salience)
        scale = resolution / (right - left)  # the square's side becomes `resolution`
        squares.append(WorkingImage(ex.name, ex.image.crop(box), ex.mask.crop(box), ex.caption, ex.original_size,
                                    (round(top * scale), round(left * scale))))
    upscaler = Upscaler(device) if any(sq.image.width < resolution for sq in squares) else None
    for sq in squares:
        sq.image = upscaler.to_resolution(sq.image, resolution) if upscaler else resize(sq.image, resolution)
        sq.mask = sq.mask.resize((resolution, resolution), Image.Resampling.BILINEAR)
    if upscaler:
        upscaler.close()
    return squares


def _write(out_dir: Path, squares: list[WorkingImage]) -> None:
    (out_dir / "images").mkdir()
    (out_dir / "masks").mkdir()
    rows = []
    for i, sq in enumerate(squares):
        image_rel, mask_rel = f"images/{i:04d}.png", f"masks/{i:04d}.png"
        sq.image.convert("RGB").save(out_dir / image_rel)
        sq.mask.convert("L").save(out_dir / mask_rel)
        rows.append((image_rel, mask_rel, sq.caption, *sq.original_size, *sq.crop_top_left))
    with (out_dir / "captions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
