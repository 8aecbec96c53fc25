"""The request checks stability-ai/sdxl's schema cannot express, run before any expensive work.

One function per rule, named for what it checks; each raises :class:`InputError` naming the inputs
involved and saying what would work, or returns the value to use (sizes are rounded, with a log line).
The step rules count the steps each diffusers pipeline will really run, with diffusers' own arithmetic
(strength: ``int(steps * strength)``; ``denoising_end``/``denoising_start``: timesteps on either side of a
cutoff, ignored outside (0, 1)), on the timesteps of the request's own scheduler, so a request either
denoises at least one step in every stage or is refused before any.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .generate import REFINER_STRENGTH
from .schedulers import make_scheduler

log = logging.getLogger(__name__)

# CLIP reads 77 tokens; longer prompts are cut by the tokenizer. This only stops absurd payloads.
MAX_PROMPT_CHARS = 10_000
MAX_SIDE = 4096  # width/height: 16x the pixels SDXL was trained at is already far past useful
MAX_STEPS = 500  # num_inference_steps' schema maximum
MAX_REFINE_STEPS = MAX_STEPS  # as num_inference_steps


class InputError(ValueError):
    """A request the model cannot run as asked; ``input_names`` are the inputs the message blames."""

    def __init__(self, input_names: str | Sequence[str], message: str):
        self.input_names = (input_names,) if isinstance(input_names, str) else tuple(input_names)
        super().__init__(f"{', '.join(self.input_names)}: {message}")


# --- one rule each -----------------------------------------------------------------------------------


def check_text_length(name: str, text: str) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(name, f"{len(text)} characters is over the limit of {MAX_PROMPT_CHARS}")


def multiple_of_8(value: int, name: str) -> int:
    """A width or height between 8 and MAX_SIDE, rounded down to a multiple of 8 (what the VAE needs),
    saying so when it changes."""
    if value > MAX_SIDE:
        raise InputError(name, f"{value} is over the limit of {MAX_SIDE}")
    if value < 8:
        raise InputError(name, f"{value} is too small; use at least 8 (a multiple of 8)")
    rounded = value - value % 8
    if rounded != value:
        log.info("%s %d is not a multiple of 8: rounded down to %d", name, value, rounded)
    return rounded


def check_refine_steps_range(refine_steps: int | None) -> None:
    if refine_steps is not None and refine_steps > MAX_REFINE_STEPS:
        raise InputError("refine_steps", f"{refine_steps} is over the limit of {MAX_REFINE_STEPS}")
    if refine_steps is not None and refine_steps < 1:
        raise InputError("refine_steps", f"{refine_steps} is not allowed; use a positive number or leave it empty")


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def check_seed(seed: int | None) -> None:
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise InputError("seed", f"{seed} is outside {SEED_RANGE[0]} to {SEED_RANGE[1]}; use a smaller number "
                                 "(or leave it empty for a random seed)")


def check_mask_has_image(has_image: bool, has_mask: bool) -> None:
    if has_mask and not has_image:
        raise InputError("mask", "a mask needs an image to inpaint; pass image as well")


def strength_steps(steps: int, strength: float) -> int:
    """The denoising steps an img2img/inpaint pipeline runs for ``steps`` at ``strength`` (diffusers'
    ``get_timesteps``: ``min(int(steps * strength), steps)``)."""
    return min(int(steps * strength), steps)


def check_strength_leaves_a_step(steps: int, strength: float, *, steps_input: str = "num_inference_steps",
                                 strength_input: str | None = "prompt_strength", stage: str = "the image",
                                 also_blame: Sequence[str] = (), max_steps: int = MAX_STEPS) -> None:
    """Refuse a ``strength`` (a fraction of ``steps``) that leaves no denoising step, naming both inputs
    (``strength_input`` None: a fixed strength, e.g. the refiner's 0.3; ``also_blame``: other inputs that
    chose this stage) and the values that would work (step counts up to ``max_steps``, the model's limit)."""
    if strength_steps(steps, strength) >= 1:
        return
    names = [steps_input] + ([strength_input] if strength_input else []) + list(also_blame)
    if strength <= 0:
        raise InputError(names, f"{strength_input} 0 leaves {stage} as it is: no denoising step would run; "
                                f"use a {strength_input} above 0 (e.g. 0.8)")
    fewest = next((n for n in range(steps, max_steps + 1) if strength_steps(n, strength) >= 1), None)
    what = f"{strength_input} {strength:g}" if strength_input else f"{int(strength * 100)}%"
    ways = [f"{steps_input} of at least {fewest}"] if fewest else []
    if strength_input:
        lowest = math.ceil(100 / steps) / 100
        while strength_steps(steps, lowest) < 1:
            lowest += 0.01
        ways.append(f"{strength_input} of at least {lowest:.2f}")
    raise InputError(names, f"{what} of {steps} steps is int({steps} x {strength:g}) = 0 denoising steps for "
                            f"{stage}; use {' or '.join(ways)}")


def check_base_image_refiner_steps(refine_steps: int | None, num_inference_steps: int) -> None:
    """base_image_refiner runs the refiner as img2img at strength 0.3 over ``refine_steps`` (default: the
    base's ``num_inference_steps``): refuse a count that gives it no step."""
    steps, name = (refine_steps, "refine_steps") if refine_steps else (num_inference_steps, "num_inference_steps")
    check_strength_leaves_a_step(steps, REFINER_STRENGTH, steps_input=name, strength_input=None,
                                 stage="the refiner (base_image_refiner refines 30% of the steps)")


@dataclass(frozen=True)
class Timesteps:
    """A scheduler's timesteps for one step count, and its order (2: Heun's steps come in pairs)."""

    values: tuple[float, ...]
    order: int
    num_train_timesteps: int = 1000

    @classmethod
    def of(cls, scheduler: str, config, steps: int) -> "Timesteps":
        sched = make_scheduler(scheduler, config)
        sched.set_timesteps(steps, device="cpu")
        return cls(tuple(float(t) for t in sched.timesteps), sched.order, sched.config.num_train_timesteps)

    def cutoff(self, fraction: float) -> int:
        """diffusers' ``discrete_timestep_cutoff`` for a denoising_end/denoising_start ``fraction``."""
        return int(round(self.num_train_timesteps - fraction * self.num_train_timesteps))

    def after_strength(self, steps: int, strength: float | None) -> tuple[float, ...]:
        """The timesteps left once img2img/inpaint skipped the first ones for ``strength`` (None: txt2img)."""
        if strength is None:
            return self.values
        return self.values[(steps - strength_steps(steps, strength)) * self.order:]


def ensemble_steps(base: Timesteps, refiner: Timesteps, steps: int, strength: float | None,
                   high_noise_frac: float) -> tuple[int, int]:
    """(base steps, refiner steps) of expert_ensemble_refiner, as diffusers counts them: the base keeps its
    timesteps at or above the ``denoising_end`` cutoff; the refiner takes those below the
    ``denoising_start`` cutoff (one more for a 2nd-order scheduler when even)."""
    base_count = sum(1 for t in base.after_strength(steps, strength) if t >= base.cutoff(high_noise_frac))
    refiner_count = sum(1 for t in refiner.values if t < refiner.cutoff(high_noise_frac))
    if refiner.order == 2 and refiner_count % 2 == 0:
        refiner_count += 1
    return base_count, refiner_count


def check_ensemble_split(scheduler: str, base_config, refiner_config, steps: int, strength: float | None,
                         high_noise_frac: float) -> None:
    """expert_ensemble_refiner hands over at ``high_noise_frac``: refuse a split that leaves the base or the
    refiner no step, saying which high_noise_frac (or step count) gives both at least one.

    At 0 and 1 diffusers ignores denoising_end/denoising_start: the base denoises fully and the refiner
    then refines at its default strength of 0.3 (as base_image_refiner does); that case is logged and
    checked as such.
    """
    if not 0 < high_noise_frac < 1:
        log.info("high_noise_frac %g: diffusers ignores a hand-over at 0 or 1, so the base denoises fully and "
                 "the refiner then refines 30%% of the steps (as base_image_refiner)", high_noise_frac)
        check_strength_leaves_a_step(steps, REFINER_STRENGTH, strength_input=None, also_blame=["high_noise_frac"],
                                     stage=f"the refiner (at high_noise_frac {high_noise_frac:g} it refines 30% "
                                           "of the steps)")
        return
    base, refiner = Timesteps.of(scheduler, base_config, steps), Timesteps.of(scheduler, refiner_config, steps)
    base_count, refiner_count = ensemble_steps(base, refiner, steps, strength, high_noise_frac)
    if base_count >= 1 and refiner_count >= 1:
        return
    stage = "the base model" if base_count < 1 else "the refiner"
    working = [f / 100 for f in range(1, 100) if min(ensemble_steps(base, refiner, steps, strength, f / 100)) >= 1]
    ways = [f"a high_noise_frac between {working[0]:.2f} and {working[-1]:.2f}"] if working else []
    for n in range(steps + 1, MAX_STEPS + 1):
        b, r = Timesteps.of(scheduler, base_config, n), Timesteps.of(scheduler, refiner_config, n)
        if min(ensemble_steps(b, r, n, strength, high_noise_frac)) >= 1:
            ways.append(f"num_inference_steps of at least {n}")
            break
    names = ["high_noise_frac", "num_inference_steps"] + (["prompt_strength"] if strength is not None else [])
    if not ways and strength is not None:
        ways.append("a higher prompt_strength")
    raise InputError(names, f"expert_ensemble_refiner hands over at high_noise_frac {high_noise_frac:g}, which with "
                            f"{steps} {scheduler} steps" + (f" at prompt_strength {strength:g}" if strength is not None
                                                             else "")
                            + f" leaves {stage} no denoising step; use " + (" or ".join(ways) or "no_refiner"))


# --- the whole request -------------------------------------------------------------------------------


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
    prompt_strength: float = 0.8,
    high_noise_frac: float = 0.8,
    scheduler: str = "K_EULER",
    scheduler_config=None,
    refiner_scheduler_config=None,
    seed: int | None = None,
) -> tuple[int, int]:
    """Every rule for one predict request; returns (width, height) rounded to 8.

    The expert_ensemble_refiner split is checked when the scheduler configs are given (they decide the
    timesteps).
    """
    check_text_length("prompt", prompt)
    check_text_length("negative_prompt", negative_prompt)
    size = multiple_of_8(width, "width"), multiple_of_8(height, "height")
    check_refine_steps_range(refine_steps)
    check_seed(seed)
    check_mask_has_image(has_image, has_mask)
    strength = prompt_strength if has_image else None
    if strength is not None:
        check_strength_leaves_a_step(num_inference_steps, strength,
                                     stage="the inpainted image" if has_mask else "the image")
    if refine == "base_image_refiner":
        check_base_image_refiner_steps(refine_steps, num_inference_steps)
    elif refine == "expert_ensemble_refiner" and scheduler_config is not None and refiner_scheduler_config is not None:
        check_ensemble_split(scheduler, scheduler_config, refiner_scheduler_config, num_inference_steps, strength,
                             float(high_noise_frac))
    return size
