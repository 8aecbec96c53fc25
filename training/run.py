"""From an archive of photos to a weights tar: validate -> prepare -> train -> export."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import distributed, export, loop
from .config import TrainConfig, TrainingInputError

log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a training returns (the fields of train.py's TrainingOutput)."""

    weights: Path  # the lean weights tar: what replicate_weights / COG_WEIGHTS take
    checkpoints: Path | None  # tar of checkpoints/checkpoint-N/ (reference files); None when none was saved
    dataset: Path  # tar of the prepared images, masks and captions.csv
    validation_images: list[Path] = field(default_factory=list)


def train_model(input_images: Path, cfg: TrainConfig, output_dir: Path | None = None,
                base_dir: Path | None = None) -> TrainingResult:
    """Fine-tune SDXL on ``input_images`` (a .zip/.tar of photos); the outputs land in ``output_dir``
    (a fresh temporary directory when not given; removed again when training fails)."""
    cfg.validate()  # cheap checks first
    input_images = Path(input_images)
    if not input_images.is_file():
        raise TrainingInputError(f"input_images: {input_images.name} is not a file")
    chosen = cfg.seed is None
    cfg = cfg.with_seed()
    log.info("seed %d%s", cfg.seed, " (random: no seed given)" if chosen else "")
    own_output_dir = output_dir is None
    output_dir = Path(tempfile.mkdtemp(prefix="sdxl-weights-")) if output_dir is None else Path(output_dir)

    work_dir = Path(tempfile.mkdtemp(prefix="sdxl-train-"))
    try:
        dataset_dir = prepare_dataset(input_images, work_dir / "prepared", cfg)
        return train_on_prepared(dataset_dir, cfg, output_dir, work_dir / "out", base_dir=base_dir)
    except BaseException:
        if own_output_dir:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # prepared images, checkpoints: all in the tars now


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


def train_on_prepared(dataset_dir: Path, cfg: TrainConfig, output_dir: Path, work_dir: Path,
                      base_dir: Path | None = None, validation_images: int | None = None) -> TrainingResult:
    """Train on a prepared directory (images/, masks/, captions.csv) and write the outputs into ``output_dir``.

    ``validation_images``: how many to generate at the end (default ``validate.NUM_IMAGES``; 0: none)."""
    from . import validate

    cfg = cfg.validate().with_seed()
    work_dir, output_dir = Path(work_dir), Path(output_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if base_dir is None:
        import weights

        base_dir = weights.resolve("sdxl-base")
    processes = distributed.num_processes()
    if processes > 1:
        distributed.launch(train_and_save, (dataset_dir, cfg, work_dir, base_dir), processes)
    else:
        train_and_save(dataset_dir, cfg, work_dir, base_dir)
    loop.release_memory()  # the validation pipeline loads next
    weights_dir = work_dir / "weights"
    checkpoints = sorted((work_dir / export.CHECKPOINTS_DIR).glob("checkpoint-*"))
    export.copy_dataset(dataset_dir, work_dir / "dataset")
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def output(path: Path) -> Path:
        written.append(path)
        return path

    try:
        result = TrainingResult(
            weights=export.write_tar(weights_dir, output(output_dir / export.WEIGHTS_TAR)),
            checkpoints=(export.write_tar(work_dir / export.CHECKPOINTS_DIR, output(output_dir / export.CHECKPOINTS_TAR),
                                          prefix=export.CHECKPOINTS_DIR) if checkpoints else None),
            dataset=export.write_tar(work_dir / "dataset", output(output_dir / export.DATASET_TAR), prefix="dataset"),
        )
        count = validate.NUM_IMAGES if validation_images is None else validation_images
        if count:
            written.extend(output_dir / validate.FILE_NAME.format(i) for i in range(count))
            result.validation_images = validate.images(weights_dir, cfg, base_dir, output_dir, count)
    except BaseException:  # nothing half-done stays: all outputs or none
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return result


def train_and_save(dataset_dir: Path, cfg: TrainConfig, work_dir: Path, base_dir: Path,
                   accelerator=None) -> None:
    """One process's training (one of several with several GPUs): the main process writes the checkpoints
    into ``work_dir/checkpoints/`` and the final weights into ``work_dir/weights/``."""
    state = loop.setup(cfg, dataset_dir, base_dir=base_dir, accelerator=accelerator)
    loop.fit(state, work_dir, save_checkpoint=export.save_weights)
    if state.accelerator.is_main_process:
        export.save_weights(Path(work_dir) / "weights", state)
    state.accelerator.wait_for_everyone()
