"""SDXL fine-tuning: pivotal tuning of new tokens plus LoRA (or a full UNet fine-tune).

``train_model(input_images, TrainConfig(...))`` is what ``train.py`` calls; the pieces:
inputs (the one table of defaults and limits), config (TrainConfig and its validation), tokens (pivotal
tuning), data (prepared dataset, latent cache), loop (the training loop), memory (the full fine-tune's
memory plan), distributed (one process per GPU), export + formats (the tars), validate (validation
images through the predictor's engine), run (the whole flow).
"""

from .config import TrainConfig, TrainingInputError
from .run import TrainingResult, train_model, train_on_prepared

__all__ = ["TrainConfig", "TrainingInputError", "TrainingResult", "train_model", "train_on_prepared"]
