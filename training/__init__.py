"""SDXL fine-tuning: pivotal tuning of new tokens plus LoRA (or a full UNet fine-tune).

``train_model(input_images, TrainConfig(...))`` is what ``train.py`` calls; the pieces:
config (inputs and validation), tokens (pivotal tuning), data (prepared dataset, latent cache),
loop (the training loop), export (the reference weight format and the tar), run (the whole flow).
"""

from .config import TrainConfig, TrainingInputError
from .run import TrainingResult, train_model, train_on_prepared

__all__ = ["TrainConfig", "TrainingInputError", "TrainingResult", "train_model", "train_on_prepared"]
