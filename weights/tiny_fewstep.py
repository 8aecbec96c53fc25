"""Tiny SDXL-Turbo and SDXL-Lightning weight sets: tiny SDXL base with its own UNet and the real scheduler set-up.

Each is laid out as the production directory is: a diffusers SDXL pipeline directory whose text encoders,
tokenizers and VAE are SDXL base's (symlinks to the tiny ``sdxl-base`` set: the same files, as in production),
with

- Turbo: its own UNet (the base's architecture, other random weights) and Turbo's scheduler config
  (EulerAncestralDiscreteScheduler, "trailing" spacing: stabilityai/sdxl-turbo's scheduler_config.json);
- Lightning: the base's configs (scheduler and ``unet/config.json``) and a UNet state dict in one
  ``sdxl_lightning_<N>step_unet.safetensors`` file, as ByteDance/SDXL-Lightning publishes it.

Only public names of the tiny base are used: the UNets are built from its ``unet/config.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .tiny_sdxl import SCHEDULER_CONFIG

SHARED_WITH_BASE = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")

# stabilityai/sdxl-turbo's scheduler/scheduler_config.json is SDXL base's with another class and spacing (and
# without the EulerDiscreteScheduler-only use_karras_sigmas)
TURBO_SCHEDULER_CONFIG = {
    **{key: value for key, value in SCHEDULER_CONFIG.items() if key != "use_karras_sigmas"},
    "_class_name": "EulerAncestralDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
    "timestep_spacing": "trailing",
}


def _base() -> Path:
    import weights

    return weights.resolve("sdxl-base")


def _link_shared(base: Path, out: Path) -> None:
    for sub in SHARED_WITH_BASE:
        (out / sub).symlink_to(os.path.realpath(base / sub), target_is_directory=True)


def _unet_like_base(base: Path, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base, subfolder="unet"))


def make_turbo(out: Path, seed: int = 300) -> None:
    base = _base()
    _link_shared(base, out)
    _unet_like_base(base, seed).to(torch.float16).save_pretrained(
        out / "unet", variant="fp16", safe_serialization=True
    )
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(TURBO_SCHEDULER_CONFIG, indent=2))
    index = json.loads((base / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerAncestralDiscreteScheduler"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def _make_lightning(out: Path, steps: int, seed: int) -> None:
    from safetensors.torch import save_file

    base = _base()
    _link_shared(base, out)
    shutil.copytree(base / "scheduler", out / "scheduler")
    (out / "unet").mkdir()
    shutil.copy(base / "unet" / "config.json", out / "unet" / "config.json")
    shutil.copy(base / "model_index.json", out / "model_index.json")
    state = {k: v.to(torch.float16).contiguous() for k, v in _unet_like_base(base, seed).state_dict().items()}
    save_file(state, out / f"sdxl_lightning_{steps}step_unet.safetensors")


def make_lightning_4step(out: Path) -> None:
    _make_lightning(out, 4, seed=400)


def make_lightning_8step(out: Path) -> None:
    _make_lightning(out, 8, seed=800)
