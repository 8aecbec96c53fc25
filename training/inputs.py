"""The training inputs' defaults, choices and limits: one table.

``train.py``'s ``Input()``s read these module-level constants (cog's static parser follows them into
local modules), ``TrainConfig`` takes its defaults and checks from here, and ``preprocess.prepare``
checks the same limits, so a value refused in one place is refused in all.
"""

from __future__ import annotations

SEED = None
RESOLUTION = 512
MIN_RESOLUTION = 16
MAX_RESOLUTION = 4096
RESOLUTION_MULTIPLE = 8  # the VAE downsamples 8x
TRAIN_BATCH_SIZE = 4
NUM_TRAIN_EPOCHS = 4000
MAX_TRAIN_STEPS = 1000
IS_LORA = True
UNET_LEARNING_RATE = 1e-6
TI_LR = 3e-4
LORA_LR = 1e-4
LORA_RANK = 32
LR_SCHEDULERS = ["constant", "linear"]
LR_SCHEDULER = "constant"
LR_WARMUP_STEPS = 100
TOKEN_STRING = "TOK"
CAPTION_PREFIX = "a photo of TOK"
MASK_TARGET_PROMPTS = None
CROP_BASED_ON_SALIENCE = True
USE_FACE_DETECTION_INSTEAD = False
CLIPSEG_TEMPERATURE = 1.0
VERBOSE = True
CHECKPOINTING_STEPS = 200
FILETYPES = ["zip", "tar", "infer"]
INPUT_IMAGES_FILETYPE = "infer"
# options beyond the reference's inputs; their defaults keep the reference's behaviour
SNR_GAMMA = None  # min-SNR loss weighting (Hang et al. 2023; diffusers' scripts suggest 5.0); None: off
NOISE_OFFSET = 0.0  # per-channel offset added to the noise (diffusers' --noise_offset; 0.05-0.1 is usual); 0: off
MAX_NOISE_OFFSET = 1.0


def resolution_problem(resolution) -> str | None:
    """Why ``resolution`` cannot be used (a sentence), or None."""
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        return f"must be an integer, not {resolution!r}"
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION or resolution % RESOLUTION_MULTIPLE:
        return (f"must be a multiple of {RESOLUTION_MULTIPLE} between {MIN_RESOLUTION} and {MAX_RESOLUTION}, "
                f"not {resolution}")
    return None


def token_string_problem(token_string) -> str | None:
    from sdxl.trigger import NEW_TOKEN_NAME

    if not isinstance(token_string, str) or not token_string.strip() or any(c.isspace() for c in token_string):
        return f"must be one word without spaces, not {token_string!r}"
    if NEW_TOKEN_NAME.fullmatch(token_string):
        return f"{token_string!r} collides with the new token names <s0>, <s1>, ..."
    return None


def caption_prefix_problem(caption_prefix, token_string: str) -> str | None:
    from sdxl.trigger import contains_word

    if not isinstance(caption_prefix, str) or not contains_word(caption_prefix, token_string):
        return f"{caption_prefix!r} must contain token_string {token_string!r} as a whole word (same case)"
    return None
