"""Cog training entry point: the documented inputs of stability-ai/sdxl's trainings API, nothing else.

The work is in the ``training`` package (``training.train_model``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import List, Optional

from cog import BaseModel, Input, Path

from training import TrainConfig, train_model
from training.inputs import (
    CAPTION_PREFIX,
    CHECKPOINTING_STEPS,
    CLIPSEG_TEMPERATURE,
    CROP_BASED_ON_SALIENCE,
    FILETYPES,
    INPUT_IMAGES_FILETYPE,
    IS_LORA,
    LORA_LR,
    LORA_RANK,
    LR_SCHEDULER,
    LR_SCHEDULERS,
    LR_WARMUP_STEPS,
    MASK_TARGET_PROMPTS,
    MAX_NOISE_OFFSET,
    MAX_TRAIN_STEPS,
    NOISE_OFFSET,
    NUM_TRAIN_EPOCHS,
    RESOLUTION,
    SEED,
    SNR_GAMMA,
    TI_LR,
    TOKEN_STRING,
    TRAIN_BATCH_SIZE,
    UNET_LEARNING_RATE,
    USE_FACE_DETECTION_INSTEAD,
    VERBOSE,
)


class TrainingOutput(BaseModel):
    weights: Path  # what replicate_weights / COG_WEIGHTS take (Replicate's trainings API reads this field)
    checkpoints: Optional[Path]  # a tar of checkpoints/checkpoint-N/ (None when none was saved)
    dataset: Path  # a tar of the prepared images, masks and captions
    validation_images: List[Path]  # drawn with the trained weights and the caption prefix


_previous_output: Optional[Path] = None  # the last training's output directory, delivered by now


def train(
    input_images: Path = Input(
        description="A .zip or .tar file containing the image files that will be used for fine-tuning",
    ),
    seed: Optional[int] = Input(
        description="Random seed for reproducible training. Leave empty to use a random seed (it is logged)",
        default=SEED,
    ),
    resolution: int = Input(
        description="Square pixel resolution which your images will be resized to for training",
        default=RESOLUTION,
    ),
    train_batch_size: int = Input(
        description="Batch size (per device) for training",
        default=TRAIN_BATCH_SIZE,
    ),
    num_train_epochs: int = Input(
        description="Number of epochs to loop through your training dataset (used only when max_train_steps is 0)",
        default=NUM_TRAIN_EPOCHS,
    ),
    max_train_steps: int = Input(
        description="Number of individual training steps. Takes precedence over num_train_epochs",
        default=MAX_TRAIN_STEPS,
    ),
    is_lora: bool = Input(
        description="Whether to use LoRA training. If set to False, will use full fine-tuning of the UNet",
        default=IS_LORA,
    ),
    unet_learning_rate: float = Input(
        description="Learning rate for the U-Net in a full fine-tune (is_lora=False)",
        default=UNET_LEARNING_RATE,
    ),
    ti_lr: float = Input(
        description="Scaling of learning rate for training textual inversion embeddings. Don't alter unless you know what you're doing.",
        default=TI_LR,
    ),
    lora_lr: float = Input(
        description="Scaling of learning rate for training LoRA embeddings. Don't alter unless you know what you're doing.",
        default=LORA_LR,
    ),
    lora_rank: int = Input(
        description="Rank of LoRA embeddings. Don't alter unless you know what you're doing.",
        default=LORA_RANK,
    ),
    lr_scheduler: str = Input(
        description="Learning rate scheduler to use for training",
        default=LR_SCHEDULER,
        choices=LR_SCHEDULERS,
    ),
    lr_warmup_steps: int = Input(
        description="Number of warmup steps for lr schedulers with warmups.",
        default=LR_WARMUP_STEPS,
    ),
    token_string: str = Input(
        description="A unique string that will be trained to refer to the concept in the input images. Can be anything, but TOK works well",
        default=TOKEN_STRING,
    ),
    caption_prefix: str = Input(
        description="Text which will be used as prefix during automatic captioning. Must contain the `token_string`. For example, if caption text is 'a photo of TOK', automatic captioning will expand to 'a photo of TOK under a bridge', 'a photo of TOK holding a cup', etc.",
        default=CAPTION_PREFIX,
    ),
    mask_target_prompts: Optional[str] = Input(
        description="Prompt that describes part of the image that you will find important. For example, if you are fine-tuning your pet, `photo of a dog` will be a good prompt. Prompt-based masking is used to focus the fine-tuning process on the important/salient parts of the image",
        default=MASK_TARGET_PROMPTS,
    ),
    crop_based_on_salience: bool = Input(
        description="If you want to crop the image to `target_size` based on the important parts of the image, set this to True. If you want to crop the image based on face detection, set this to False",
        default=CROP_BASED_ON_SALIENCE,
    ),
    use_face_detection_instead: bool = Input(
        description="If you want to use face detection instead of CLIPSeg for masking. For face applications, we recommend using this option.",
        default=USE_FACE_DETECTION_INSTEAD,
    ),
    clipseg_temperature: float = Input(
        description="How blurry you want the CLIPSeg mask to be. We recommend this value be something between `0.5` to `1.0`. If you want to have more sharp mask (but thus more errorful), you can decrease this value.",
        default=CLIPSEG_TEMPERATURE,
    ),
    verbose: bool = Input(description="verbose output", default=VERBOSE),
    checkpointing_steps: int = Input(
        description="Number of steps between saving checkpoints. Set to very very high number to disable checkpointing, because you don't need one.",
        default=CHECKPOINTING_STEPS,
    ),
    input_images_filetype: str = Input(
        description="Filetype of the input images. Can be either `zip` or `tar`. By default its `infer`, and it will be inferred from the ext of input file.",
        default=INPUT_IMAGES_FILETYPE,
        choices=FILETYPES,
    ),
    snr_gamma: Optional[float] = Input(
        description="Min-SNR loss weighting (5.0 is the usual value): weighs each step by min(SNR, gamma) / SNR, so the easy, low-noise timesteps count less and training converges faster. Empty: no weighting, as the reference trainer.",
        default=SNR_GAMMA,
    ),
    noise_offset: float = Input(
        description="Noise offset: adds a random per-channel constant of this size to the training noise, so the model learns to make much darker or brighter images (0.05 to 0.1 is usual). 0: off, as the reference trainer.",
        default=NOISE_OFFSET,
        ge=0.0,
        le=MAX_NOISE_OFFSET,
    ),
) -> TrainingOutput:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TrainConfig(
        seed=seed,
        resolution=resolution,
        train_batch_size=train_batch_size,
        num_train_epochs=num_train_epochs,
        max_train_steps=max_train_steps,
        is_lora=is_lora,
        unet_learning_rate=unet_learning_rate,
        ti_lr=ti_lr,
        lora_lr=lora_lr,
        lora_rank=lora_rank,
        lr_scheduler=lr_scheduler,
        lr_warmup_steps=lr_warmup_steps,
        token_string=token_string,
        caption_prefix=caption_prefix,
        mask_target_prompts=mask_target_prompts,
        crop_based_on_salience=crop_based_on_salience,
        use_face_detection_instead=use_face_detection_instead,
        clipseg_temperature=clipseg_temperature,
        verbose=verbose,
        checkpointing_steps=checkpointing_steps,
        input_images_filetype=input_images_filetype,
        snr_gamma=snr_gamma,
        noise_offset=noise_offset,
    )
    global _previous_output
    if _previous_output is not None:  # coglet has sent the last training's files: they go now
        shutil.rmtree(_previous_output, ignore_errors=True)
        _previous_output = None
    output_dir = Path(tempfile.mkdtemp(prefix="sdxl-weights-"))
    try:
        result = train_model(Path(input_images), config, output_dir=output_dir)
    except BaseException:
        shutil.rmtree(output_dir, ignore_errors=True)
        raise
    _previous_output = output_dir
    return TrainingOutput(
        weights=Path(result.weights),
        checkpoints=Path(result.checkpoints) if result.checkpoints else None,
        dataset=Path(result.dataset),
        validation_images=[Path(p) for p in result.validation_images],
    )
