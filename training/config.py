"""The training hyperparameters (every documented input except the images) and their validation.

Defaults and limits come from the one table, ``inputs``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from . import inputs


class TrainingInputError(ValueError):
    """A training input is unusable; the message names the input."""


@dataclass
class TrainConfig:
    seed: int | None = inputs.SEED
    resolution: int = inputs.RESOLUTION
    train_batch_size: int = inputs.TRAIN_BATCH_SIZE
    num_train_epochs: int = inputs.NUM_TRAIN_EPOCHS
    max_train_steps: int = inputs.MAX_TRAIN_STEPS
    is_lora: bool = inputs.IS_LORA
    unet_learning_rate: float = inputs.UNET_LEARNING_RATE
    ti_lr: float = inputs.TI_LR
    lora_lr: float = inputs.LORA_LR
    lora_rank: int = inputs.LORA_RANK
    lr_scheduler: str = inputs.LR_SCHEDULER
    lr_warmup_steps: int = inputs.LR_WARMUP_STEPS
    token_string: str = inputs.TOKEN_STRING
    caption_prefix: str = inputs.CAPTION_PREFIX
    mask_target_prompts: str | None = inputs.MASK_TARGET_PROMPTS
    crop_based_on_salience: bool = inputs.CROP_BASED_ON_SALIENCE
    use_face_detection_instead: bool = inputs.USE_FACE_DETECTION_INSTEAD
    clipseg_temperature: float = inputs.CLIPSEG_TEMPERATURE
    verbose: bool = inputs.VERBOSE
    checkpointing_steps: int = inputs.CHECKPOINTING_STEPS
    input_images_filetype: str = inputs.INPUT_IMAGES_FILETYPE
    snr_gamma: float | None = inputs.SNR_GAMMA
    noise_offset: float = inputs.NOISE_OFFSET
    # not user inputs
    num_new_tokens: int = 2  # token_string -> "<s0><s1>"
    pivot_fraction: float = 0.5  # embeddings train for this fraction of the steps

    def validate(self) -> "TrainConfig":
        """Cheap checks, before any archive is opened or model loaded. Raises TrainingInputError."""
        _require(inputs.resolution_problem(self.resolution) is None, "resolution", inputs.resolution_problem(self.resolution))
        for name in ("train_batch_size", "num_train_epochs", "lora_rank", "checkpointing_steps"):
            _require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        _require(self.max_train_steps >= 0, "max_train_steps", f"must be >= 0 (0 = use num_train_epochs), got {self.max_train_steps}")
        _require(self.lr_warmup_steps >= 0, "lr_warmup_steps", f"must be >= 0, got {self.lr_warmup_steps}")
        for name in ("unet_learning_rate", "ti_lr", "lora_lr"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, name, f"must be a finite number >= 0, got {value}")
        _require(math.isfinite(self.clipseg_temperature) and self.clipseg_temperature > 0, "clipseg_temperature",
                 f"must be a finite number above 0, got {self.clipseg_temperature}")
        _require(self.lr_scheduler in inputs.LR_SCHEDULERS, "lr_scheduler", f"must be one of {inputs.LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        _require(self.input_images_filetype in inputs.FILETYPES, "input_images_filetype",
                 f"must be one of {inputs.FILETYPES}, got {self.input_images_filetype!r}")
        _require(inputs.token_string_problem(self.token_string) is None, "token_string", inputs.token_string_problem(self.token_string))
        _require(inputs.caption_prefix_problem(self.caption_prefix, self.token_string) is None, "caption_prefix",
                 inputs.caption_prefix_problem(self.caption_prefix, self.token_string))
        _require(self.seed is None or 0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")
        _require(self.snr_gamma is None or (math.isfinite(self.snr_gamma) and self.snr_gamma > 0), "snr_gamma",
                 f"must be a number above 0 (5.0 is usual) or empty for no weighting, got {self.snr_gamma}")
        _require(math.isfinite(self.noise_offset) and 0 <= self.noise_offset <= inputs.MAX_NOISE_OFFSET, "noise_offset",
                 f"must be between 0 and {inputs.MAX_NOISE_OFFSET} (0.05-0.1 is usual), got {self.noise_offset}")
        return self

    def with_seed(self) -> "TrainConfig":
        """A copy whose seed is set: the given one, or a random one when empty."""
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(4), "big")
        return TrainConfig(**{**asdict(self), "seed": seed})


def _require(ok: bool, name: str, message: str | None) -> None:
    if not ok:
        raise TrainingInputError(f"{name}: {message}")
