"""The GPU check (issue 9): one run on a machine with one NVIDIA GPU and no network, one markdown table.

    bash scripts/gpu-check.sh            # on the GPU machine: full-size random SDXL weights, 1024x1024, 30 steps
    bash scripts/gpu-check.sh --smoke    # anywhere: tiny weights on the CPU, the same steps, small sizes

Sections, each recorded in the table (a failing section is a row saying so; the others still run):

1. weights: full-size SDXL-architecture random weights made on the machine (bench/full_weights.py, no download);
2. the device test layer (tests/device) on real CUDA (on the CPU: the stand-in device; smoke: one file);
3. every predict mode, ours (Predictor, the product's fast path) against plain diffusers fp16 pipelines loaded
   as the diffusers docs do, the same settings and seed (K_EULER, guidance 7.5), PNG files written on both
   sides; then ours with SDXL_COMPILE=1 (setup compile time reported apart);
4. LoRA under compile: first load, switch to another LoRA, back to base: seconds and graphs compiled
   (torch._dynamo's unique_graphs counter: 0 means no recompilation);
5. training: LoRA steps at resolution 1024 batch 4 (and the defaults, 512 batch 4) and full fine-tune steps,
   seconds per step and peak GPU memory (torch.cuda.max_memory_allocated).

The table goes to ``$OUT/gpu-check.md`` when OUT is set, else ``bench/results/gpu-check.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 7.5 * 60  # the whole check must end within 8 minutes on the GPU machine

FULL = dict(size=1024, steps=30, warm_steps=4, refine_steps=30, lora_res=1024, lora_batch=4, lora_steps=10,
            default_res=512, default_steps=3, full_res=1024, full_batch=4, full_steps=3, images=4)
SMOKE = dict(size=64, steps=4, warm_steps=4, refine_steps=4, lora_res=64, lora_batch=2, lora_steps=1,
             default_res=32, default_steps=1, full_res=64, full_batch=2, full_steps=1, images=2)
MODES = {
    "txt2img": {},
    "img2img": {"image": True},
    "inpaint": {"image": True, "mask": True},
    "expert_ensemble_refiner": {"refine": "expert_ensemble_refiner"},
    "base_image_refiner": {"refine": "base_image_refiner"},
}


class Check:
    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.plan = SMOKE if smoke else FULL
        self.rows: list[tuple[str, str, str, str]] = []  # section, what, figure, note
        self.started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    def row(self, section: str, what: str, figure: str, note: str = "") -> None:
        self.rows.append((section, what, figure, note))
        print(f"[gpu-check] {section} | {what} | {figure} | {note}", flush=True)

    def section(self, name: str, fn) -> None:
        left = BUDGET_S - (time.monotonic() - self.started)
        if left < 20 and not self.smoke:
            self.row(name, "skipped", "-", f"time budget spent ({BUDGET_S:.0f}s)")
            return
        start = time.monotonic()
        try:
            fn()
        except Exception as e:  # a failing section is reported, and the others still run
            traceback.print_exc()
            self.row(name, "FAILED", "-", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        self.row(name, "section time", f"{time.monotonic() - start:.1f} s")
        free_gpu()

    def table(self) -> str:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
        lines = [f"# GPU check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
                 f"GPU: {gpu}; torch {torch.__version__}; mode: {'smoke (tiny weights, CPU)' if self.smoke else 'full'};"
                 f" total {time.monotonic() - self.started:.0f} s", "",
                 "| section | what | figure | note |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines) + "\n"


def free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


# ---------------------------------------------------------------- 1. weights


def make_weights(check: Check) -> None:
    import weights

    if check.smoke:
        os.environ["SDXL_WEIGHTS"] = "tiny"
        weights.resolve("sdxl-base")
        check.row("weights", "tiny", "ok")
        return
    from bench import full_weights

    root = Path(os.environ.get("GPU_CHECK_WEIGHTS") or check.tmp / "full")
    start = time.monotonic()
    os.environ["SDXL_WEIGHTS"] = "tiny"  # the tokenizers, scheduler and safety checker come from the tiny sets
    weights.resolve("sdxl-base")
    os.environ["SDXL_WEIGHTS"] = str(full_weights.make(root, log=print))
    check.row("weights", "full-size SDXL base + refiner, random", f"{time.monotonic() - start:.0f} s",
              f"{full_weights.weight_bytes(root) / 2**30:.1f} GiB fp16")


# ---------------------------------------------------------------- 2. the device test layer


def device_layer(check: Check) -> None:
    import torch

    if check.smoke:  # the test suite runs tests/device itself (on the stand-in device)
        check.row("device layer", "tests/device", "skipped", "smoke: the test suite runs it")
        return
    targets = ["tests/device", "--ignore=tests/device/test_gpu_check.py"]  # the smoke: a CPU check
    env = {**os.environ, "SDXL_WEIGHTS": "tiny", "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", "-n", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    where = "real CUDA" if torch.cuda.is_available() else "stand-in CUDA"
    check.row("device layer", f"pytest {' '.join(targets)} ({where})", "passed" if proc.returncode == 0 else
              f"FAILED (rc {proc.returncode})", summary)


# ---------------------------------------------------------------- 3. predict modes against plain diffusers


def inputs(check: Check) -> dict:
    import numpy as np
    from PIL import Image

    n = check.plan["size"]
    y, x = np.mgrid[0:n, 0:n] * (256 // max(1, n // 64)) // 4
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(check.tmp / "image.png")
    mask = np.zeros((n, n), np.uint8)
    mask[n // 4: 3 * n // 4, n // 4: 3 * n // 4] = 255
    Image.fromarray(mask).save(check.tmp / "mask.png")
    return {"image": check.tmp / "image.png", "mask": check.tmp / "mask.png"}


def request(check: Check, mode: str, files: dict, **extra) -> dict:
    p = check.plan
    args = dict(prompt="An astronaut riding a rainbow unicorn", negative_prompt="", image=None, mask=None,
                width=p["size"], height=p["size"], num_outputs=1, scheduler="K_EULER",
                num_inference_steps=p["steps"], guidance_scale=7.5, prompt_strength=0.8, seed=1234,
                refine="no_refiner", high_noise_frac=0.8, refine_steps=p["refine_steps"], apply_watermark=True,
                lora_scale=0.6, replicate_weights=None, disable_safety_checker=True, output_format="png",
                output_quality=80)
    spec = MODES[mode]
    args["refine"] = spec.get("refine", "no_refiner")
    if spec.get("image") or mode == "base_image_refiner":
        args["image"] = files["image"]
    if spec.get("mask"):
        args["mask"] = files["mask"]
    return {**args, **extra}


class Plain:
    """Plain diffusers, as the model card loads it: fp16 pipelines on the device, nothing else."""

    def __init__(self, device: str, dtype):
        import torch
        from diffusers import (EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                               StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline)

        import weights

        base_dir, refiner_dir = weights.resolve("sdxl-base"), weights.resolve("sdxl-refiner")
        kw = dict(variant="fp16", dtype=dtype, use_safetensors=True)
        self.base = StableDiffusionXLPipeline.from_pretrained(base_dir, **kw).to(device)
        self.img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(self.base, dtype=dtype)
        self.inpaint = StableDiffusionXLInpaintPipeline.from_pipe(self.base, dtype=dtype)
        self.refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            refiner_dir, text_encoder_2=self.base.text_encoder_2, vae=self.base.vae, **kw).to(device)
        for pipe in (self.base, self.img2img, self.inpaint, self.refiner):
            pipe.set_progress_bar_config(disable=True)
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        self.device, self.torch = device, torch

    def __call__(self, a: dict, out: Path) -> None:
        from PIL import Image

        torch = self.torch
        common = dict(prompt=a["prompt"], negative_prompt=a["negative_prompt"], guidance_scale=a["guidance_scale"],
                      num_inference_steps=a["num_inference_steps"],
                      generator=torch.Generator(self.device).manual_seed(a["seed"]))
        refine = a["refine"]
        extra = {"output_type": "latent"} if refine != "no_refiner" else {}
        if refine == "expert_ensemble_refiner":
            extra["denoising_end"] = a["high_noise_frac"]
        if a["mask"] is not None:
            pipe = self.inpaint
            extra.update(image=Image.open(a["image"]).convert("RGB"), mask_image=Image.open(a["mask"]).convert("L"),
                         strength=a["prompt_strength"], width=a["width"], height=a["height"])
        elif a["image"] is not None:
            pipe = self.img2img
            extra.update(image=Image.open(a["image"]).convert("RGB"), strength=a["prompt_strength"])
        else:
            pipe = self.base
            extra.update(width=a["width"], height=a["height"])
        images = pipe(**common, **extra).images
        if refine != "no_refiner":
            rk = {"image": images}
            if refine == "expert_ensemble_refiner":
                rk["denoising_start"] = a["high_noise_frac"]
            else:
                rk["strength"] = 0.3
                common["num_inference_steps"] = a["refine_steps"] or a["num_inference_steps"]
            images = self.refiner(**common, **rk).images
        for i, image in enumerate(images):
            image.save(out / f"plain-{i}.png")


def pixel_difference(ours: Path, theirs: Path) -> str:
    """How far our image is from plain diffusers' (fused QKV and channels_last reorder fp16 sums)."""
    import numpy as np
    from PIL import Image

    diff = np.abs(np.asarray(Image.open(ours), dtype=int) - np.asarray(Image.open(theirs), dtype=int))
    return f"pixels vs plain: max diff {diff.max()}, mean {diff.mean():.3f}"


@contextlib.contextmanager
def predictor(check: Check, **env):
    """A set-up Predictor (the product), with the fast path's switches in ``env``."""
    with mock.patch.dict(os.environ, env), contextlib.ExitStack() as stack:
        if check.smoke:  # on the CPU the fast path (compile included) is off: the smoke checks the script
            from sdxl import acceleration

            stack.enter_context(mock.patch.object(acceleration, "WARM_UP_SIZE", check.plan["size"]))
        from predict import Predictor

        p = Predictor()
        p.setup()
        yield p


def predict_modes(check: Check) -> None:
    import torch

    files = inputs(check)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    plan = check.plan
    eager: dict[str, float] = {}
    plain_times: dict[str, float] = {}
    plain_images: dict[str, Path] = {}
    with predictor(check) as ours:
        plain = Plain(device, dtype)
        for mode in MODES:
            a = request(check, mode, files)
            if not check.smoke:  # first calls pay one-off costs (kernel selection, allocator growth)
                warm = {**a, "num_inference_steps": plan["warm_steps"], "refine_steps": None}
                ours.predict(**warm)
                plain(warm, check.tmp)
            paths = []
            eager[mode] = timed(lambda: paths.extend(ours.predict(**a)))
            plain_times[mode] = timed(lambda: plain(a, check.tmp))
            plain_images[mode] = check.tmp / f"plain-{mode}.png"
            (check.tmp / "plain-0.png").replace(plain_images[mode])
            check.row("predict", f"{mode} {plan['size']}px {plan['steps']} steps: ours / plain diffusers",
                      f"{eager[mode] / plain_times[mode]:.3f}x",
                      f"ours {eager[mode]:.2f} s, plain {plain_times[mode]:.2f} s (target <= 1.02x); "
                      f"{pixel_difference(paths[0], plain_images[mode])}")
        del plain
    free_gpu()
    compile_start = time.monotonic()
    with predictor(check, SDXL_COMPILE="1", SDXL_COMPILE_CACHE=str(check.tmp / "compile-cache")) as ours:
        check.row("predict", "compiled: setup (load + compile + warm-up)", f"{time.monotonic() - compile_start:.1f} s",
                  "smoke: on the CPU the fast path is off (CUDA only)" if check.smoke else "")
        for mode in MODES:
            a = request(check, mode, files)
            if not check.smoke:
                ours.predict(**a)  # compiles what the warm-up did not (the refiner UNet, other shapes)
            paths = []
            t = timed(lambda: paths.extend(ours.predict(**a)))
            check.row("predict", f"{mode}: ours compiled / plain diffusers eager", f"{t / plain_times[mode]:.3f}x",
                      f"compiled {t:.2f} s (target <= 0.75x); {pixel_difference(paths[0], plain_images[mode])}")
        lora_under_compile(check, ours, files)


# ---------------------------------------------------------------- 4. LoRA under compile


def lora_tars(check: Check, unet) -> list[Path]:
    from devkit.reference_tars import reference_lora_tar

    os.environ["SDXL_LOCAL_WEIGHTS_DIR"] = str(check.tmp)  # the operator's opt-in for the tars named by path
    return [reference_lora_tar(check.tmp / f"lora{i}" / "trained_model.tar", unet, rank=32, seed=i,
                               te_dims=(unet_te_dims(check)))
            for i in range(2)]


def unet_te_dims(check: Check) -> tuple[int, int]:
    import weights
    from transformers import CLIPTextConfig

    base = weights.resolve("sdxl-base")
    return tuple(CLIPTextConfig.from_pretrained(base / s).hidden_size for s in ("text_encoder", "text_encoder_2"))


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def lora_under_compile(check: Check, ours, files: dict) -> None:
    tars = lora_tars(check, ours.models.base.unet)
    a = request(check, "txt2img", files, num_inference_steps=check.plan["warm_steps"])
    steps = [("first LoRA load", str(tars[0])), ("switch to another LoRA", str(tars[1])), ("back to base", None)]
    for what, source in steps:
        before = graphs()
        t = timed(lambda: ours.finetunes.use(source, ours.cache, input_name="replicate_weights"))
        ours.predict(**{**a, "replicate_weights": source})
        new = graphs() - before
        check.row("LoRA (compiled)", what, f"{t:.2f} s", f"graphs compiled: {new} (target: 0; switch <= 1.5 s)")


# ---------------------------------------------------------------- 5. training


def training(check: Check) -> None:
    import torch
    from accelerate.state import AcceleratorState

    from bench.training import make_dataset
    from training import TrainConfig, loop

    plan = check.plan
    runs = [("LoRA", True, plan["lora_res"], plan["lora_batch"], plan["lora_steps"], "<= 44 GiB at 1024 batch 4"),
            ("LoRA (defaults)", True, plan["default_res"], 4, plan["default_steps"], "<= 22 GiB at 512 batch 4"),
            ("full fine-tune", False, plan["full_res"], plan["full_batch"], plan["full_steps"], "")]
    if check.smoke:
        runs = [runs[0], runs[2]]
    for name, is_lora, res, batch, steps, target in runs:
        if time.monotonic() - check.started > BUDGET_S - 30 and not check.smoke:
            check.row("training", name, "skipped", "time budget spent")
            continue
        AcceleratorState._reset_state(reset_partial_state=True)
        data = make_dataset(check.tmp / f"data-{res}", plan["images"], res)
        cfg = TrainConfig(seed=0, resolution=res, train_batch_size=batch, max_train_steps=steps, is_lora=is_lora,
                          lora_rank=32, lr_warmup_steps=0, checkpointing_steps=10**6, verbose=False)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.monotonic()
        state = loop.setup(cfg, data)
        setup_s = time.monotonic() - start
        start = time.monotonic()
        loop.fit(state, check.tmp / f"work-{name}")
        sync()
        per_step = (time.monotonic() - start) / steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        check.row("training", f"{name}: {steps} steps, resolution {res}, batch {batch}",
                  f"{per_step:.2f} s/step", f"peak GPU {peak:.1f} GiB {target}; setup {setup_s:.0f} s")
        del state
        free_gpu()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny weights on the CPU, small sizes")
    a = ap.parse_args(argv)
    import torch

    if a.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    elif not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible (use --smoke on a machine without a GPU)", file=sys.stderr)
        return 2
    check = Check(a.smoke)
    check.section("weights", lambda: make_weights(check))
    check.section("device layer", lambda: device_layer(check))
    check.section("predict", lambda: predict_modes(check))
    check.section("training", lambda: training(check))
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-check.md").write_text(check.table())
    print(check.table())
    failed = [r for r in check.rows if r[1] == "FAILED" or r[2].startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
