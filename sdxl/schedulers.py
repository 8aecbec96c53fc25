"""The seven schedulers of stability-ai/sdxl, all from diffusers, made fresh for every request."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.configuration_utils import FrozenDict

# name -> (class, config overrides)
SCHEDULERS = {
    "DDIM": (DDIMScheduler, {}),
    "DPMSolverMultistep": (DPMSolverMultistepScheduler, {}),
    "HeunDiscrete": (HeunDiscreteScheduler, {}),
    "KarrasDPM": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "K_EULER_ANCESTRAL": (EulerAncestralDiscreteScheduler, {}),
    "K_EULER": (EulerDiscreteScheduler, {}),
    "PNDM": (PNDMScheduler, {}),
}


def make_scheduler(name: str, config: FrozenDict):
    """A new scheduler ``name`` built from a pipeline's scheduler ``config`` (schedulers keep state)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler: {name!r} is not one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)
