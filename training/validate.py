"""Validation images: what the trained weights draw, made at the end of a training so users see it
without a second call.

The weights are read from the directory that becomes the weights tar and applied by the predictor's
own engine (``sdxl.finetune.FineTunes`` on a ``sdxl.models`` pipeline, one ``sdxl.generate`` call):
these are the images a prediction with the tar and the same settings gives (no refiner, no watermark).
The prompt is the caption prefix ("a photo of TOK"), the seed fixed, the size the training resolution.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import TrainConfig

log = logging.getLogger(__name__)

NUM_IMAGES = 2
SEED = 42
STEPS = 25  # the predictor's default is 50; a preview needs fewer
# the predictor's defaults for the rest
SCHEDULER = "K_EULER"
GUIDANCE_SCALE = 7.5
LORA_SCALE = 0.6
FILE_NAME = "validation-{}.png"


def prompt_for(cfg: TrainConfig) -> str:
    return cfg.caption_prefix.strip()


def images(weights_dir: Path, cfg: TrainConfig, base_dir: Path, out_dir: Path, count: int = NUM_IMAGES) -> list[Path]:
    """Generate ``count`` images with the weights in ``weights_dir``; returns the PNG paths in ``out_dir``."""
    from sdxl.finetune import FineTunes
    from sdxl.generate import Settings, generate
    from sdxl.models import assemble, load_base, pick_device

    device, dtype = pick_device()
    pipe = load_base(Path(base_dir), device, dtype)
    models = assemble(pipe, None, None, device, dtype)  # txt2img, no refiner, no safety checker
    finetunes = FineTunes(models)
    finetunes.apply(finetunes.read(Path(weights_dir), input_name="weights", source=str(weights_dir)))
    prompt = prompt_for(cfg)
    settings = Settings(
        prompt=finetunes.rewrite_prompt(prompt), negative_prompt="", width=cfg.resolution, height=cfg.resolution,
        num_outputs=count, scheduler=SCHEDULER, num_inference_steps=STEPS, guidance_scale=GUIDANCE_SCALE,
        prompt_strength=0.8, seed=SEED, refine="no_refiner", high_noise_frac=0.8, refine_steps=None,
        apply_watermark=False, lora_scale=LORA_SCALE,
    )
    log.info("validation: %d image(s) of %r, seed %d, %dx%d", count, prompt, SEED, cfg.resolution, cfg.resolution)
    drawn = generate(models, settings, lora=finetunes.is_lora)
    out_dir = Path(out_dir)
    paths = []
    for i, image in enumerate(drawn):
        path = out_dir / FILE_NAME.format(i)
        image.save(path)
        paths.append(path)
    del models, pipe, finetunes
    return paths
