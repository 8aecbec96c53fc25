"""What each model this engine serves needs: one row per model, read by the loaders, the checks and the predictors.

SDXL 1.0 (predict.py) and the few-step distilled models (predict_turbo.py) are the same architecture and run
through the same diffusers pipelines; they differ only in the facts below. Sources for the few-step rows:

- SDXL-Turbo (stabilityai/sdxl-turbo model card): adversarial diffusion distillation, 1-4 steps,
  ``guidance_scale=0.0``, 512x512; its own scheduler config (EulerAncestralDiscreteScheduler, "trailing").
  Image-to-image needs ``num_inference_steps * strength >= 1``. Licence: Stability AI Community License.
- SDXL-Lightning (ByteDance/SDXL-Lightning model card): a UNet file per step count, on the SDXL base
  pipeline, with ``EulerDiscreteScheduler.from_config(..., timestep_spacing="trailing")``, guidance 0,
  1024x1024. Licence: openrail++.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    weights: str  # the weight set: a diffusers SDXL pipeline directory
    unet_file: str | None  # a UNet state dict (diffusers keys) in that directory instead of its unet/ weights
    scheduler: str | None  # a name in sdxl.schedulers.SCHEDULERS; None: the request picks one
    timestep_spacing: str | None  # set on the weights' scheduler config; None: the config's own
    default_steps: int
    max_steps: int
    guidance_scale: float  # the recommendation; <= 1 turns classifier-free guidance (and the negative prompt) off
    size: int  # native width and height
    refiner: bool  # whether the SDXL refiner modes apply
    licence: str


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("sdxl", "sdxl-base", None, None, None, 50, 500, 7.5, 1024, True, "CreativeML Open RAIL++-M"),
        ModelSpec(
            "sdxl-turbo", "sdxl-turbo", None, "K_EULER_ANCESTRAL", "trailing", 1, 10, 0.0, 512, False,
            "Stability AI Community License",
        ),
        ModelSpec(
            "sdxl-lightning-4step", "sdxl-lightning-4step", "sdxl_lightning_4step_unet.safetensors",
            "K_EULER", "trailing", 4, 10, 0.0, 1024, False, "CreativeML Open RAIL++-M",
        ),
        ModelSpec(
            "sdxl-lightning-8step", "sdxl-lightning-8step", "sdxl_lightning_8step_unet.safetensors",
            "K_EULER", "trailing", 8, 10, 0.0, 1024, False, "CreativeML Open RAIL++-M",
        ),
    )
}

# the models predict_turbo.py serves, its default first
FEWSTEP_MODELS = ["sdxl-turbo", "sdxl-lightning-4step", "sdxl-lightning-8step"]
