"""Predict overhead: Predictor.predict() versus the plain diffusers pipeline call doing the same work.

Both sides run on the same modules (the predictor's, so full-size weights are in memory once), the same
settings and seed; the baseline is ``StableDiffusionXL*Pipeline.from_pipe(...)`` called directly with the
same watermarker, plus saving the PNG files predict() returns. The safety checker is off in the compared
call (plain SDXL pipelines have none) and timed separately. Images are checked equal.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import common
from .common import Row
from devkit.oracle import DEFAULTS, Oracle  # noqa: E402  (common puts the checkout on sys.path)

# every predict() input, explicitly (the defaults in predict.py are cog Input objects): the oracle's, checker off
REQUEST = {**DEFAULTS, "disable_safety_checker": True}


def make_inputs(directory: Path, size: int) -> dict[str, Path]:
    y, x = np.mgrid[0:size, 0:size] * (256 / size)
    rgb = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8)
    q = size // 4
    rgb[q : size - q, q : size - q] = (250, 40, 40)
    Image.fromarray(rgb).save(directory / "image.png")
    mask = np.zeros((size, size), np.uint8)
    mask[q : size - q, q : size - q] = 255
    Image.fromarray(mask).save(directory / "mask.png")
    return {"image": directory / "image.png", "mask": directory / "mask.png"}


class Baseline(Oracle):
    """The tests' diffusers oracle (devkit/oracle.py: plain pipelines called as the diffusers docs do, the
    same code the correctness tests compare against), built on the predictor's modules instead of loading its own
    copy (full size: the weights are in memory once), plus writing the PNG files predict() returns."""

    def __init__(self, models, watermarker):
        from diffusers import (
            StableDiffusionXLImg2ImgPipeline,
            StableDiffusionXLInpaintPipeline,
            StableDiffusionXLPipeline,
        )

        base = models.base
        # dtype given: diffusers 0.42's from_pipe otherwise casts the shared modules to fp32
        dt = dict(dtype=base.unet.dtype)
        self.base = StableDiffusionXLPipeline.from_pipe(base, **dt)
        self.img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(base, **dt)
        self.inpaint = StableDiffusionXLInpaintPipeline.from_pipe(base, **dt)
        self.refiner = StableDiffusionXLImg2ImgPipeline.from_pipe(models.refiner, **dt)
        for pipe in (self.base, self.img2img, self.inpaint, self.refiner):
            pipe.set_progress_bar_config(disable=True)
            pipe.watermark = watermarker  # diffusers skips it on latent outputs (the base of a refiner mode)
        self.config, self.refiner_config = self.base.scheduler.config, self.refiner.scheduler.config
        self.out = Path(tempfile.mkdtemp(prefix="bench-baseline-"))

    def __call__(self, mode: str, r: dict) -> list[Path]:
        paths = []
        for i, array in enumerate(super().__call__(mode, **r)):
            paths.append(self.out / f"out-{i}.png")
            Image.fromarray(array).save(paths[-1], "PNG")
        return paths


def cases(size: str, has_refiner: bool) -> list[tuple[str, dict]]:
    """(mode, request overrides) per measured case."""
    if size == "tiny":
        out = [("txt2img", dict(width=64, height=64)), ("txt2img", dict(width=256, height=256)),
               ("img2img", dict(width=128, height=128)), ("inpaint", dict(width=128, height=128))]
        refine = dict(width=128, height=128)
    else:
        out = [(m, dict(width=256, height=256, num_inference_steps=2)) for m in ("txt2img", "img2img", "inpaint")]
        refine = dict(width=256, height=256, num_inference_steps=4)  # base_image_refiner needs >= 4 (30% >= 1)
    if has_refiner:
        out += [("txt2img", {**refine, "refine": "expert_ensemble_refiner", "high_noise_frac": 0.5}),
                ("txt2img", {**refine, "refine": "base_image_refiner"})]
    return out


def run(p, size: str, device: str, quick: bool, has_refiner: bool = True) -> list[Row]:
    from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

    baseline = Baseline(p.models, p.watermarker)
    if not isinstance(p.watermarker, StableDiffusionXLWatermarker):
        raise RuntimeError("unexpected watermarker")
    # full size: the equality-check call is the warm-up; then 2 interleaved timed runs each (4-12 s a call when the
    # box is quiet, 3x that under the other engineers' test load: 30-minute budget), 1 with --quick
    warmup, repeats = (0, 1 if quick else 2) if size == "full" else ((1, 3) if quick else (2, 7))
    inputs_dir = Path(tempfile.mkdtemp(prefix="bench-inputs-"))
    rows = []
    for mode, overrides in cases(size, has_refiner):
        r = {**REQUEST, **overrides}
        if mode != "txt2img":
            r.update(make_inputs(inputs_dir, r["width"]))
            if mode == "img2img":
                r["mask"] = None
        ours_paths = p.predict(**r)
        base_paths = baseline(mode, r)
        equal = all(np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))
                    for a, b in zip(ours_paths, base_paths))
        runs: dict = {}
        medians = common.compare({"ours": lambda: p.predict(**r), "baseline": lambda: baseline(mode, r)},
                                 warmup=warmup, repeats=repeats, device=device, runs=runs)
        label = mode if r["refine"] == "no_refiner" else r["refine"]
        figure = f"{label} {r['width']}x{r['height']} {r['num_inference_steps']} steps"
        target = 1.05 if size == "tiny" else 1.02
        rows.append(Row(f"predict/{size}", figure, medians["ours"], medians["baseline"], target,
                        note=("images equal" if equal else "IMAGES DIFFER") + f"; runs: {common.spread(runs)}"))
    if size == "full":
        return rows  # the full-size set links the tiny checker: nothing to learn about the checker at full size
    # the safety checker, which plain SDXL pipelines do not have: what it adds to a request
    r = {**REQUEST, **cases(size, False)[0][1]}
    medians = common.compare({"ours": lambda: p.predict(**{**r, "disable_safety_checker": False}),
                              "baseline": lambda: p.predict(**r)}, warmup=1, repeats=repeats, device=device)
    rows.append(Row(f"predict/{size}", "safety checker on vs off (info)", medians["ours"], medians["baseline"],
                    note="tiny checker"))
    return rows


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--lora", action="store_true", help="then run the LoRA bench on the same predictor")
    ap.add_argument("--no-refiner", action="store_true", help="full size: without the full-size refiner")
    a = ap.parse_args(argv)
    from . import full_weights

    root = common.use_weights(a.size, refiner=not a.no_refiner)
    has_refiner = a.size == "tiny" or full_weights.has_full_refiner(Path(root))
    p = common.make_predictor(a.size, a.device, compile=a.compile)
    rows = run(p, a.size, a.device, a.quick, has_refiner)
    if not has_refiner:
        rows.append(Row(f"predict/{a.size}", "refiner modes", None, None,
                        note="skipped: the full-size refiner was not generated (RAM)"))
    if a.lora:
        from . import lora

        rows += lora.run(p, a.size, a.device, a.quick)
    rows.append(Row(f"predict/{a.size}", "process peak RSS (info)", common.peak_rss(), None, unit="B",
                    note=f"dtype {p.models.dtype}, device {p.models.device}"))
    common.write_rows(rows, a.out)


if __name__ == "__main__":
    sys.exit(main())
