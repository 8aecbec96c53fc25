"""From an archive of photos to a weights tar: validate -> prepare -> train -> export."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from . import export, loop
from .config import TrainConfig, TrainingInputError

log = logging.getLogger(__name__)


def train_model(input_images: Path, cfg: TrainConfig, output_tar: Path | None = None,
                base_dir: Path | None = None) -> Path:
    """Fine-tune SDXL on ``input_images`` (a .zip/.tar of photos) and return the weights tar.

    The tar holds lora.safetensors (or unet.safetensors), embeddings.pti, special_params.json,
    checkpoints/checkpoint-N/ (the same files every checkpointing_steps) and dataset/.
    """
    cfg.validate()  # cheap checks first
    input_images = Path(input_images)
    if not input_images.is_file():
        raise TrainingInputError(f"input_images: {input_images} is not a file")
    chosen = cfg.seed is None
    cfg = cfg.with_seed()
    log.info("seed %d%s", cfg.seed, " (random: no seed given)" if chosen else "")
    own_output_dir = None
    if output_tar is None:
        own_output_dir = Path(tempfile.mkdtemp(prefix="sdxl-weights-"))
        output_tar = own_output_dir / "trained_model.tar"

    work_dir = Path(tempfile.mkdtemp(prefix="sdxl-train-"))
    try:
        dataset_dir = prepare_dataset(input_images, work_dir / "prepared", cfg)
        return train_on_prepared(dataset_dir, cfg, output_tar, work_dir / "out", base_dir=base_dir)
    except BaseException:
        if own_output_dir is not None:
            shutil.rmtree(own_output_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # prepared images, checkpoints: all in the tar now


def prepare_dataset(input_images: Path, out_dir: Path, cfg: TrainConfig) -> Path:
    from preprocess import prepare

    import torch

    return Path(prepare(
        input_images, out_dir,
        resolution=cfg.resolution,
        caption_prefix=cfg.caption_prefix,
        token_string=cfg.token_string,
        mask_target_prompts=cfg.mask_target_prompts,
        crop_based_on_salience=cfg.crop_based_on_salience,
        use_face_detection_instead=cfg.use_face_detection_instead,
        clipseg_temperature=cfg.clipseg_temperature,
        input_images_filetype=cfg.input_images_filetype,
        seed=cfg.seed,
        device="cuda" if torch.cuda.is_available() else "cpu",
    ))


def train_on_prepared(dataset_dir: Path, cfg: TrainConfig, output_tar: Path, work_dir: Path,
                      base_dir: Path | None = None) -> Path:
    """Train on a prepared directory (images/, masks/, captions.csv) and write ``output_tar``."""
    cfg = cfg.validate().with_seed()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    state = loop.setup(cfg, dataset_dir, base_dir=base_dir)
    loop.fit(state, work_dir, save_checkpoint=export.save_weights)
    export.save_weights(work_dir, state)
    export.copy_dataset(dataset_dir, work_dir / "dataset")
    return export.write_tar(work_dir, output_tar)
