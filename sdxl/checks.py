"""The request checks stability-ai/sdxl's schema cannot express, run before any expensive work.

Each error names the input and says what is accepted.
"""

from __future__ import annotations

import logging

from .generate import REFINER_STRENGTH

log = logging.getLogger(__name__)

# CLIP reads 77 tokens; longer prompts are cut by the tokenizer. This only stops absurd payloads.
MAX_PROMPT_CHARS = 10_000
MAX_SIDE = 4096  # width/height: 16x the pixels SDXL was trained at is already far past useful
MAX_REFINE_STEPS = 500  # as num_inference_steps


def check_request(
    *,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    refine: str,
    refine_steps: int | None,
    num_inference_steps: int,
    has_image: bool,
    has_mask: bool,
) -> tuple[int, int]:
    """Raise ValueError naming the input for anything out of bounds; return (width, height) rounded to 8."""
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"{name}: {len(text)} characters is over the limit of {MAX_PROMPT_CHARS}")
    for name, value in (("width", width), ("height", height)):
        if value > MAX_SIDE:
            raise ValueError(f"{name}: {value} is over the limit of {MAX_SIDE}")
    if refine_steps is not None and refine_steps > MAX_REFINE_STEPS:
        raise ValueError(f"refine_steps: {refine_steps} is over the limit of {MAX_REFINE_STEPS}")
    if refine_steps is not None and refine_steps < 1:
        raise ValueError(f"refine_steps: {refine_steps} is not allowed; use a positive number or leave it empty")
    check_refine_steps(refine, refine_steps, num_inference_steps)
    if has_mask and not has_image:
        raise ValueError("mask: a mask needs an image to inpaint; pass image as well")
    return multiple_of_8(width, "width"), multiple_of_8(height, "height")


def multiple_of_8(value: int, name: str) -> int:
    """Round a size down to a multiple of 8 (what the VAE needs), saying so when it changes."""
    if value < 8:
        raise ValueError(f"{name}: {value} is too small; use at least 8 (a multiple of 8)")
    rounded = value - value % 8
    if rounded != value:
        log.info("%s %d is not a multiple of 8: rounded down to %d", name, value, rounded)
    return rounded


def check_refine_steps(refine: str, refine_steps: int | None, num_inference_steps: int) -> None:
    """base_image_refiner runs int(steps * 0.3) refiner steps: refuse a count that gives none."""
    if refine != "base_image_refiner":
        return
    steps, name = (refine_steps, "refine_steps") if refine_steps else (num_inference_steps, "num_inference_steps")
    if int(steps * REFINER_STRENGTH) < 1:
        raise ValueError(
            f"{name}: base_image_refiner refines over {int(REFINER_STRENGTH * 100)}% of {steps} steps, "
            f"which is no step at all; use at least {int(1 / REFINER_STRENGTH) + 1}"
        )
