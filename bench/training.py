"""Training: time per step and peak memory of ``training.loop`` versus a minimal diffusers + peft loop doing the
same work, and the VAE encodes per training image.

Both sides train the same thing on the same prepared dataset (built here: ``images/NNNN.png``, ``masks/NNNN.png``,
``captions.csv``; no preprocess models): pivotal tuning of two new tokens in both text encoders (until the pivot
at half the steps) plus a rank-32 LoRA on the UNet attention projections, the masked MSE on the cached latents,
AdamW with the same two parameter groups, the same seed. The minimal loop is written below with diffusers, peft and
transformers only; with the same seed it consumes the random numbers in the same order, so both sides print the
same losses (checked: "losses equal").

Each side runs in its own process (``--child ours|minimal``), so each peak RSS is its own. Every call of
``AutoencoderKL.encode`` is counted (and the images it encoded). Time per step: the median over the steps after the
first (the first pays one-off costs: allocator growth, first autograd graph), the same steps on both sides.
Full size on the CPU: the frozen UNet in bf16 and bf16 autocast (``Accelerator(mixed_precision="bf16", cpu=True)``,
what ``loop.setup`` does on a GPU), trained LoRA and embeddings in fp32; tiny: fp32.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import common
from .common import Row

# size: (resolution, batch, images, steps, rank, bf16)
PLAN = {"tiny": (256, 2, 4, 12, 32, False), "full": (256, 1, 2, 8, 32, True)}  # full: ~12 GB, ~1 min a side
SEED = 1234
CAPTION = "a photo of TOK, {}"
LR_UNET, LR_TI, WD_UNET = 1e-4, 3e-4, 1e-4  # training.TrainConfig defaults / loop constants


# ---------------------------------------------------------------- the dataset


def make_dataset(directory: Path, n: int, resolution: int) -> Path:
    """A prepared dataset as training/preprocess writes it: square crops, masks (white = subject), captions."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        y, x = np.mgrid[0:resolution, 0:resolution]
        rgb = np.stack([x * 255 // resolution, y * 255 // resolution, np.full_like(x, 40 * i % 256)], -1)
        rgb = (rgb + rng.integers(0, 30, rgb.shape)).clip(0, 255).astype(np.uint8)
        q = resolution // 4 + 4 * i
        mask = np.zeros((resolution, resolution), np.uint8)
        mask[q : resolution - q // 2, q // 2 : resolution - q] = 255
        rgb[mask > 0] = (220, 60 + 30 * i, 40)
        Image.fromarray(rgb).save(directory / "images" / f"{i:04d}.png")
        Image.fromarray(mask).save(directory / "masks" / f"{i:04d}.png")
        rows.append((f"images/{i:04d}.png", f"masks/{i:04d}.png", CAPTION.format(["red", "blue", "cube", "disc"][i % 4])))
    with open(directory / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("image", "mask", "caption"))
        w.writerows(rows)
    return directory


# ---------------------------------------------------------------- instrumentation


class EncodeCounter:
    """Counts ``AutoencoderKL.encode`` calls and the images they encode (class-level: every instance)."""

    def __init__(self):
        from diffusers import AutoencoderKL

        self.calls = self.images = 0
        original = AutoencoderKL.encode

        def encode(vae, x, *a, **kw):
            self.calls += 1
            self.images += int(x.shape[0])
            return original(vae, x, *a, **kw)

        AutoencoderKL.encode = encode


# ---------------------------------------------------------------- ours: the public API of training/


def run_ours(base_dir: Path, dataset: Path, size: str) -> dict:
    import torch

    import training
    from training import loop

    resolution, batch, _, steps, rank, bf16 = PLAN[size]
    cfg = training.TrainConfig(seed=SEED, resolution=resolution, train_batch_size=batch, max_train_steps=steps,
                               lora_rank=rank, lr_warmup_steps=0, verbose=False, checkpointing_steps=10**6,
                               lora_lr=LR_UNET, ti_lr=LR_TI).validate()
    accelerator = None
    if bf16:
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    stamps: list[float] = []

    class StepLog(loop.StepLog):  # fit() makes one per step, after the optimizer step and loss.item()
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            stamps.append(time.perf_counter())

    loop.StepLog = StepLog
    t0 = time.perf_counter()
    state = loop.setup(cfg, dataset, base_dir=base_dir, accelerator=accelerator)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        history = loop.fit(state, Path(work))
    _ = torch
    return {"setup": t1 - t0, "stamps": stamps, "losses": [s.loss for s in history.steps],
            "pivot": history.pivot_step}


# ---------------------------------------------------------------- the minimal diffusers + peft loop


def run_minimal(base_dir: Path, dataset: Path, size: str) -> dict:
    """What a diffusers user writes for pivotal tuning + LoRA with a masked loss, nothing more."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    resolution, batch, _, steps, rank, bf16 = PLAN[size]
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    tokenizers = [CLIPTokenizer.from_pretrained(base_dir, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    encoders = [CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder", variant="fp16", torch_dtype=torch.float32),
                CLIPTextModelWithProjection.from_pretrained(base_dir, subfolder="text_encoder_2", variant="fp16",
                                                            torch_dtype=torch.float32)]
    vae = AutoencoderKL.from_pretrained(base_dir, subfolder="vae", variant="fp16", torch_dtype=torch.float32)
    noise_scheduler = DDPMScheduler.from_pretrained(base_dir, subfolder="scheduler")
    unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet", variant="fp16",
                                                torch_dtype=torch.bfloat16 if bf16 else torch.float32)

    # two new tokens in both tokenizers/encoders, rows initialised with the vocabulary's spread
    names, gen = ["<s0>", "<s1>"], torch.Generator().manual_seed(SEED)
    embeddings, keep, snapshots = [], [], []
    for tok, enc in zip(tokenizers, encoders):
        tok.add_tokens(names, special_tokens=True)
        enc.resize_token_embeddings(len(tok), mean_resizing=False)
        w = enc.get_input_embeddings().weight
        ids = tok.convert_tokens_to_ids(names)
        with torch.no_grad():
            w[ids] = torch.randn(len(ids), w.shape[1], generator=gen) * w[: ids[0]].std()
        frozen = torch.ones(w.shape[0], dtype=torch.bool)
        frozen[ids] = False
        embeddings.append(w), keep.append(frozen), snapshots.append(w.detach().clone())
        enc.requires_grad_(False)
        w.requires_grad_(True)

    unet.requires_grad_(False)
    torch.manual_seed(SEED)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora = [p for p in unet.parameters() if p.requires_grad]
    for p in lora:
        p.data = p.data.float()

    # the latents, once per image
    with open(dataset / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    latents, masks = [], []
    with torch.no_grad():
        for row in rows:
            px = np.asarray(Image.open(dataset / row["image"]).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
            latent = vae.encode(torch.from_numpy(px).permute(2, 0, 1)[None]).latent_dist.mode() * vae.config.scaling_factor
            mask = np.asarray(Image.open(dataset / row["mask"]).convert("L"), dtype=np.float32) / 255.0
            latents.append(latent)
            masks.append(F.interpolate(torch.from_numpy(mask)[None, None], size=latent.shape[-2:], mode="area"))
    del vae
    latents, masks = torch.cat(latents), torch.cat(masks)
    captions = [row["caption"].replace("TOK", "<s0><s1>") for row in rows]
    time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)

    optimizer = torch.optim.AdamW([{"params": embeddings, "lr": LR_TI, "weight_decay": 0.0},
                                   {"params": lora, "lr": LR_UNET, "weight_decay": WD_UNET}])
    rng = torch.Generator().manual_seed(SEED)
    pivot = max(1, steps // 2)
    t1 = time.perf_counter()
    order, stamps, losses = [], [], []
    unet.train()
    for step in range(steps):
        if step == pivot:  # the embeddings stop training
            for w in embeddings:
                w.requires_grad_(False)
                w.grad = None
            optimizer.param_groups[0]["lr"] = 0.0
        if not order:
            order = list(torch.randperm(len(rows), generator=rng).split(batch))
        idx = order.pop(0)
        noise = torch.randn((len(idx), *latents.shape[1:]), generator=rng)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.set_grad_enabled(step < pivot):
                hidden, pooled = [], None
                for tok, enc in zip(tokenizers, encoders):
                    ids = tok([captions[int(i)] for i in idx], padding="max_length", max_length=tok.model_max_length,
                              truncation=True, return_tensors="pt").input_ids
                    out = enc(ids, output_hidden_states=True)
                    hidden.append(out.hidden_states[-2])
                    pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
                prompt = torch.cat(hidden, dim=-1)
            noisy = noise_scheduler.add_noise(latents[idx], noise, t)
            dt = unet.dtype
            pred = unet(noisy.to(dt), t, encoder_hidden_states=prompt.to(dt),
                        added_cond_kwargs={"text_embeds": pooled.to(dt),
                                           "time_ids": time_ids.expand(len(idx), 6).to(dt)}).sample
        m = masks[idx]
        loss = (((pred.float() - noise.float()) ** 2 * m).sum(dim=(1, 2, 3))
                / (m.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp_min(1e-6)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for w, frozen, snap in zip(embeddings, keep, snapshots):
                w[frozen] = snap[frozen]
                if step < pivot:  # the reference's retract_embeddings: the new rows' spread pulled toward the vocabulary's
                    new = w[~frozen]
                    w[~frozen] = new * (snap[frozen].std() / new.std()) ** 0.1
        losses.append(loss.item())
        stamps.append(time.perf_counter())
    return {"setup": t1 - t0, "stamps": stamps, "losses": losses, "pivot": pivot}


# ---------------------------------------------------------------- the figures


def child(which: str, size: str, base_dir: Path, dataset: Path) -> dict:
    import torch

    common.rss_guard()
    torch.set_num_threads(torch.get_num_threads())
    counter = EncodeCounter()
    start = time.perf_counter()
    r = (run_ours if which == "ours" else run_minimal)(base_dir, dataset, size)
    stamps = r.pop("stamps")
    r["step_times"] = [b - a for a, b in zip(stamps, stamps[1:])]  # steps 2..N
    r.update(total=time.perf_counter() - start, peak_rss=common.peak_rss(), encode_calls=counter.calls,
             encoded_images=counter.images)
    return r


def run(size: str, quick: bool, device: str = "cpu") -> list[Row]:
    if device != "cpu":
        print("training: --device cuda is the trainer's own choice (loop.make_accelerator); this bench runs on the "
              "CPU", file=sys.stderr)
    resolution, batch, n_images, steps, rank, bf16 = PLAN[size]
    root = common.use_weights(size)
    if size == "full":
        base_dir = Path(root) / "sdxl-base"
    else:
        import weights

        base_dir = Path(weights.resolve("sdxl-base"))
    work = Path(tempfile.mkdtemp(prefix="bench-training-"))
    dataset = make_dataset(work / "prepared", n_images, resolution)
    rounds = 1 if quick else 2
    results: dict[str, list[dict]] = {"ours": [], "minimal": []}
    for _ in range(rounds):  # interleaved: ours, minimal, ours, minimal
        for which in results:
            out = subprocess.run([sys.executable, "-m", "bench.training", "--child", which, "--size", size,
                                  "--root", str(base_dir), "--dataset", str(dataset)],
                                 cwd=common.REPO, capture_output=True, text=True, env={**os.environ})
            if out.returncode != 0:
                raise RuntimeError(f"training --child {which} failed ({out.returncode}):\n{out.stderr[-3000:]}")
            results[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    # per process the median step (steps 2..N: robust to another process's burst), then the best process;
    # before the pivot (embeddings train: gradients through both text encoders) and after it, separately
    pivot = results["ours"][0]["pivot"]
    phases = {"before": lambda t: t[: pivot - 1], "after": lambda t: t[pivot:]}  # steps 2..pivot, pivot+2..N
    step = {k: min(statistics.median(r["step_times"]) for r in v) for k, v in results.items()}
    by_phase = {ph: {k: min(statistics.median(cut(r["step_times"])) for r in v) for k, v in results.items()}
                for ph, cut in phases.items()}
    spread = {k: [f"{min(r['step_times']) * 1000:.0f}-{max(r['step_times']) * 1000:.0f}" for r in v]
              for k, v in results.items()}
    o, m = results["ours"][0], results["minimal"][0]
    same = np.allclose(o["losses"], m["losses"], rtol=1e-4, atol=1e-6)
    area = f"train/{size}"
    what = (f"{resolution}px batch {batch}, LoRA r{rank} + 2 tokens, {steps} steps (pivot {o['pivot']}), "
            f"{'bf16 autocast' if bf16 else 'fp32'}")
    rows = [
        Row(area, f"time per step ({what})", step["ours"], step["minimal"], target=1.05,
            note=f"median of steps 2..{steps}, best of {rounds} process(es); step range ms ours {spread['ours']} "
                 f"minimal {spread['minimal']}; losses {'equal' if same else 'DIFFER'}"),
        Row(area, "time per step before the pivot (embeddings + LoRA)", by_phase["before"]["ours"],
            by_phase["before"]["minimal"], target=1.05, note=f"median of steps 2..{pivot}"),
        Row(area, "time per step after the pivot (LoRA only)", by_phase["after"]["ours"],
            by_phase["after"]["minimal"], target=1.05, note=f"median of steps {pivot + 2}..{steps}"),
        Row(area, "peak RSS (whole process)", o["peak_rss"], m["peak_rss"], unit="B",
            note="loading + latent cache + training"),
        Row(area, "VAE encodes per training image", o["encoded_images"] / n_images, None, target=1.0, unit="",
            absolute=True, note=f"{o['encode_calls']} encode calls for {n_images} images "
                                f"(minimal loop: {m['encoded_images']} images)"),
        Row(area, "setup (load + tokens + LoRA + latents) (info)", o["setup"], m["setup"]),
    ]
    if not same:
        rows[0].note += f" ours {[round(x, 4) for x in o['losses']]} minimal {[round(x, 4) for x in m['losses']]}"
    return rows


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["ours", "minimal"])
    ap.add_argument("--root", type=Path)
    ap.add_argument("--dataset", type=Path)
    a = ap.parse_args(argv)
    if a.child:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(child(a.child, a.size, a.root, a.dataset)))
        return
    common.write_rows(run(a.size, a.quick, a.device), a.out)


if __name__ == "__main__":
    sys.exit(main())
