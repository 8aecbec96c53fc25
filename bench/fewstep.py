"""SDXL-Turbo at 1 step (predict_turbo.py) against SDXL at 30 steps (predict.py), same machine, same size.

    .venv/bin/python -m bench.fewstep --size tiny                  # tiny weights, 256x256
    flock /work/fullsize.lock .venv/bin/python -m bench.fewstep --size full --px 256

Both are the SDXL architecture, so the figure is what the request costs end to end (text encoders, UNet
evaluations, VAE decode, watermark, PNG): Turbo runs 1 UNet evaluation without guidance, SDXL 30 steps with
classifier-free guidance (60 evaluations in batches of 2). Full size uses the random full-size SDXL weights of
``bench/full_weights.py`` (base only); the "sdxl-turbo" set is that base with Turbo's scheduler config (the real
Turbo UNet has the same shapes, so the same cost). The two predictors run one after the other, each alone in
memory; full size computes in bf16 on the CPU, as the other full-size benches do.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
from pathlib import Path

from . import common
from .common import Row

PROMPT = "An astronaut riding a rainbow unicorn"


def fewstep_weights(size: str, parent: Path) -> str:
    """SDXL_WEIGHTS holding sdxl-base (+ refiner, safety checker) and an sdxl-turbo set, for ``size``."""
    if size == "tiny":
        return common.use_weights("tiny")
    from weights.tiny_fewstep import TURBO_SCHEDULER_CONFIG

    from . import full_weights

    full = full_weights.make(refiner=False, log=lambda m: print(m, file=sys.stderr))
    for name in ("sdxl-base", "sdxl-refiner", "safety-checker"):
        (parent / name).symlink_to((full / name).resolve(), target_is_directory=True)
    turbo = parent / "sdxl-turbo"
    turbo.mkdir()
    for sub in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "unet"):
        (turbo / sub).symlink_to((full / "sdxl-base" / sub).resolve(), target_is_directory=True)
    (turbo / "scheduler").mkdir()
    (turbo / "scheduler" / "scheduler_config.json").write_text(json.dumps(TURBO_SCHEDULER_CONFIG))
    index = json.loads((full / "sdxl-base" / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerAncestralDiscreteScheduler"]
    (turbo / "model_index.json").write_text(json.dumps(index))
    os.environ["SDXL_WEIGHTS"] = str(parent)
    return str(parent)


def _to_bf16(models) -> None:
    import torch

    for module in (models.base.unet, models.base.vae, models.base.text_encoder, models.base.text_encoder_2,
                   models.safety.model):
        module.to(dtype=torch.bfloat16)
    models.dtype = models.safety.dtype = torch.bfloat16


def time_sdxl(size: str, px: int, steps: int, repeats: int) -> tuple[float, list[float]]:
    predictor = common.make_predictor(size, "cpu")
    from devkit.oracle import DEFAULTS

    def run(n):
        return predictor.predict(**{**DEFAULTS, "prompt": PROMPT, "width": px, "height": px,
                                    "num_inference_steps": n, "disable_safety_checker": True})

    run(1)  # warm-up: first calls allocate
    times = [common.timed(lambda: run(steps))[0] for _ in range(repeats)]
    del predictor
    gc.collect()
    return min(times), times


def time_turbo(size: str, px: int, repeats: int) -> tuple[float, list[float]]:
    import logging

    import torch

    common.force_dtype(torch.float32 if size == "tiny" else torch.float16)
    from predict_turbo import Predictor

    predictor = Predictor()
    predictor.setup()
    logging.getLogger().setLevel(logging.WARNING)
    if size == "full":
        _to_bf16(predictor.models.get("sdxl-turbo"))
    inputs = dict(prompt=PROMPT, negative_prompt="", image=None, mask=None, width=px, height=px, num_outputs=1,
                  num_inference_steps=1, guidance_scale=None, prompt_strength=0.5, seed=1234, model="sdxl-turbo",
                  apply_watermark=True, lora_scale=0.6, replicate_weights=None, disable_safety_checker=True,
                  output_format="png", output_quality=80)
    predictor.predict(**inputs)  # warm-up
    times = [common.timed(lambda: predictor.predict(**inputs))[0] for _ in range(repeats)]
    del predictor
    gc.collect()
    return min(times), times


def main(argv=None) -> int:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--px", type=int, default=256, help="width and height (default: %(default)s)")
    ap.add_argument("--sdxl-steps", type=int, default=30, help="default: %(default)s")
    a = ap.parse_args(argv)
    if a.device != "cpu":
        raise SystemExit("bench.fewstep: CPU only for now")
    common.rss_guard()
    with tempfile.TemporaryDirectory(prefix="bench-fewstep-") as parent:
        fewstep_weights(a.size, Path(parent))
        full = a.size == "full"
        sdxl, sdxl_runs = time_sdxl(a.size, a.px, a.sdxl_steps, repeats=1 if full or a.quick else 3)
        turbo, turbo_runs = time_turbo(a.size, a.px, repeats=3 if full or a.quick else 5)
    row = Row("fewstep", f"{a.size} {a.px}x{a.px}: sdxl-turbo 1 step / sdxl {a.sdxl_steps} steps", turbo, sdxl,
              note=f"best of: sdxl {'/'.join(f'{t:.2f}' for t in sdxl_runs)} s, "
                   f"turbo {'/'.join(f'{t:.2f}' for t in turbo_runs)} s; turbo is {sdxl / turbo:.1f}x faster")
    common.write_rows([row], a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
