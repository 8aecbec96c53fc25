"""The training hyperparameters (every documented input except the images) and their validation."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

from .tokens import contains_word

LR_SCHEDULERS = ("constant", "linear")
FILETYPES = ("zip", "tar", "infer")


class TrainingInputError(ValueError):
    """A training input is unusable; the message names the input."""


@dataclass
class TrainConfig:
    seed: int | None = None
    resolution: int = 512
    train_batch_size: int = 4
    num_train_epochs: int = 4000
    max_train_steps: int = 1000
    is_lora: bool = True
    unet_learning_rate: float = 1e-6
    ti_lr: float = 3e-4
    lora_lr: float = 1e-4
    lora_rank: int = 32
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 100
    token_string: str = "TOK"
    caption_prefix: str = "a photo of TOK"
    mask_target_prompts: str | None = None
    crop_based_on_salience: bool = True
    use_face_detection_instead: bool = False
    clipseg_temperature: float = 1.0
    verbose: bool = True
    checkpointing_steps: int = 200
    input_images_filetype: str = "infer"
    # not user inputs
    num_new_tokens: int = 2  # token_string -> "<s0><s1>"
    pivot_fraction: float = 0.5  # embeddings train for this fraction of the steps

    def validate(self) -> "TrainConfig":
        """Cheap checks, before any archive is opened or model loaded. Raises TrainingInputError."""
        for name in ("resolution", "train_batch_size", "num_train_epochs", "lora_rank", "checkpointing_steps"):
            _require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        _require(self.resolution % 8 == 0, "resolution", f"must be a multiple of 8, got {self.resolution}")
        _require(self.max_train_steps >= 0, "max_train_steps", f"must be >= 0 (0 = use num_train_epochs), got {self.max_train_steps}")
        _require(self.lr_warmup_steps >= 0, "lr_warmup_steps", f"must be >= 0, got {self.lr_warmup_steps}")
        for name in ("unet_learning_rate", "ti_lr", "lora_lr"):
            _require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _require(self.clipseg_temperature > 0, "clipseg_temperature", f"must be positive, got {self.clipseg_temperature}")
        _require(self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", f"must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        _require(self.input_images_filetype in FILETYPES, "input_images_filetype", f"must be one of {FILETYPES}, got {self.input_images_filetype!r}")
        _require(bool(self.token_string.strip()) and not re.search(r"\s", self.token_string), "token_string",
                 f"must be one word without spaces, got {self.token_string!r}")
        _require(not re.fullmatch(r"<s\d+>", self.token_string), "token_string",
                 f"{self.token_string!r} collides with the new token names <s0>, <s1>, ...")
        _require(contains_word(self.caption_prefix, self.token_string), "caption_prefix",
                 f"{self.caption_prefix!r} must contain token_string {self.token_string!r} as a whole word")
        _require(self.seed is None or 0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")
        return self

    def with_seed(self) -> "TrainConfig":
        """A copy whose seed is set: the given one, or a random one when empty."""
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(4), "big")
        return TrainConfig(**{**asdict(self), "seed": seed})


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise TrainingInputError(f"{name}: {message}")
