"""The OpenVINO CPU backend (SDXL_BACKEND=openvino) against the torch CPU path: conversion, cold start, UNet step,
end to end per mode, memory, and int8 accuracy.

    .venv/bin/python -m bench.openvino --size tiny
    flock /work/fullsize.lock .venv/bin/python -m bench.openvino --size full     # also: python -m bench --only openvino:full

Every side runs in its own child process (its own peak RSS; full-size torch fp32 and OpenVINO do not fit one
box together), one after the other, in this order:

1. ``convert``: the base UNet to fp32 IR (torch.export + openvino.convert_model, the fp16 weights kept fp16
   with a Convert to f32), then int8 (nncf.compress_weights on that IR) in a second child, then the text encoders
   and VAE (converted by setup). Time, peak RSS and peak anonymous memory of each; the IR cache is emptied first.
   At full size the two UNet stages run again inside a memory cgroup limited to 0.6x the fp32 UNet's bytes (a
   machine with that much RAM: the kernel reclaims the mmap'd weight pages RSS counts), where root may make one.
2. ``first-start``: ``Predictor.setup()`` on the converted IR: compiles it and writes OpenVINO's compiled-model
   cache.
3. ``torch`` (fp32), ``int8`` (the backend's defaults), ``fp32``, ``int8-f32`` (see ``env_for``):
   ``Predictor.setup()`` after dropping the page cache (cold start;
   OpenVINO with the IR and the compiled models cached), the UNet step (batch 2 = guidance, 256x256, the same
   seeded inputs on every side; min of 3 after a warm-up), then predict() per mode at 256x256 (min of 2 after a
   warm-up, the first of which is timed as the first request; ``--quick``: 1). ``int8-f32`` runs the UNet step
   only, and so does ``fp32`` at full size (its compiled f32 weights take 10 GB); full size uses the tiny refiner (memory): the refiner
   modes are timed at tiny size only. Torch fp32 runs end to end at full size when 20 GB of RAM are available;
   otherwise its UNet alone, and its setup() loading fp16 (a lower bound).

UNet outputs of the sides are compared (cosine, relative RMS against torch fp32).
Full-size weights: bench/full_weights.py (random init, real SDXL shapes), as the other benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common
from .common import GB, Row

SIDES = ("torch", "int8", "fp32", "int8-f32")
# the targets (ratios against torch fp32 in the same run)
TARGET_STEP, TARGET_E2E, TARGET_CONVERT_RSS, TARGET_COLD = 0.5, 0.6, 0.6, 1.3
# full-size torch fp32 end to end (~15 GB anonymous at its peak) runs when this much RAM is available (GB)
TORCH_FP32_FREE_RAM = 20
# optimum-intel's exporter on this box (issue 14): passed 12 GB RSS on the full-size base UNet and was stopped
OPTIMUM_INTEL_NOTE = "optimum-intel's exporter passed 12 GB RSS on this UNet and was stopped (issue 14)"


def cases(size: str) -> list[tuple[str, dict]]:
    steps = 2 if size == "full" else 4
    out = [(m, dict(width=256, height=256, num_inference_steps=steps)) for m in ("txt2img", "img2img", "inpaint")]
    if size == "tiny":
        out += [("txt2img", dict(width=128, height=128, num_inference_steps=4, refine=r, high_noise_frac=0.5))
                for r in ("expert_ensemble_refiner", "base_image_refiner")]
    return out


def env_for(side: str) -> dict:
    """``int8``: the backend's defaults (int8 weights, the UNets computing in OpenVINO's own precision for this CPU:
    bf16 with AMX / avx512_bf16); ``int8-f32``: int8 weights computing in f32; ``fp32``: fp32 weights in f32."""
    if side == "torch":
        return {"SDXL_BACKEND": "torch"}
    weights_, inference = {"int8": ("int8", "auto"), "int8-f32": ("int8", "f32"), "fp32": ("fp32", "f32")}[side]
    return {"SDXL_BACKEND": "openvino", "SDXL_OPENVINO_WEIGHTS": weights_, "SDXL_OPENVINO_INFERENCE": inference}


# ---------------------------------------------------------------- children


def child_convert(stage: str) -> dict:
    """``unet-fp32``, ``unet-int8``, ``rest`` (text encoders and VAE) or ``refiner``; with an empty IR cache."""
    common.rss_guard()
    import weights
    from sdxl import openvino_backend as ob

    base = weights.resolve("sdxl-base")
    start = time.perf_counter()
    if stage == "refiner":  # not measured: so that the sides' setup() finds every IR cached
        refiner = weights.resolve("sdxl-refiner")
        for precision in ("fp32", "int8"):
            ob.converted(refiner, "unet", "unet", precision, ob.export_unet(refiner, time_ids=5))
    elif stage == "rest":
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            ob.converted(base, name, "text", "fp32", ob.export_text(base, name, cls))
        for part in ("decoder", "encoder"):
            ob.converted(base, "vae", part, "fp32", ob.export_vae(base, part))
    else:
        precision = stage.split("-")[1]
        xml = ob.converted(base, "unet", "unet", precision, ob.export_unet(base, time_ids=6))
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "peak_rss": common.peak_rss(), "peak_anon": common.peak_anon()}
    if stage.startswith("unet"):
        out["ir_bytes"] = xml.with_suffix(".bin").stat().st_size
        out["fp32_unet_bytes"] = 4 * _unet_params(base)
    return out


def _unet_params(base: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in (base / "unet").glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                n += int(__import__("math").prod(shape))
    return n


def unet_inputs(unet, size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    text = unet.add_embedding.linear_1.in_features - cfg.addition_time_embed_dim * 6
    sample = torch.randn(2, cfg.in_channels, size // 8, size // 8, generator=g)
    hidden = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    cond = {"text_embeds": torch.randn(2, text, generator=g),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)}
    return sample, torch.tensor(500.0), hidden, cond


def child_side(side: str, size: str, quick: bool, outputs: Path, e2e: bool, setup_only: bool = False) -> dict:
    common.rss_guard()
    import logging

    import numpy as np
    import torch

    # libraries imported before the page cache is dropped: the figure is the weights, not python's imports
    import diffusers  # noqa: F401
    import predict
    from sdxl import openvino_backend  # noqa: F401

    if side != "torch":
        import openvino  # noqa: F401
    out: dict = {"modes": {}}
    if setup_only or e2e:
        if setup_only and side == "torch":  # torch setup as on a GPU (fp16 files loaded as fp16): fits the RAM
            common.force_dtype(torch.float16)
        dropped = common.drop_page_cache()
        start = time.perf_counter()
        p = predict.Predictor()
        p.setup()
        out.update(setup=time.perf_counter() - start, setup_rss=common.peak_rss(), dropped=dropped)
        if setup_only and side != "torch":  # OpenVINO: compiles the IR, writes the compiled-model cache
            out["peak_rss"] = common.peak_rss()
            return out
        if setup_only:  # fp16 files loaded as fp16 may stay mmap'd, unread: touch every tensor (as cold_start.py)
            from .cold_start import touch

            m = p.models
            touch([m.base.unet, m.base.vae, m.base.text_encoder, m.base.text_encoder_2, m.refiner.unet])
            out.update(setup=time.perf_counter() - start, peak_rss=common.peak_rss(), setup_rss=common.peak_rss())
            return out
        logging.getLogger().setLevel(logging.WARNING)
        unet = p.models.base.unet
    else:  # the UNet alone (full size: torch fp32 with the text encoders, or the f32-compiled IR, pass the RAM budget)
        import weights

        base = weights.resolve("sdxl-base")
        if side == "torch":
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", variant="fp16", dtype=torch.float32)
        else:
            unet = openvino_backend.converted_unet(base, side.split("-")[0], time_ids=6)
    sample, t, hidden, cond = unet_inputs(unet, 256)
    with torch.no_grad():
        call = lambda: unet(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=cond, return_dict=False)[0]
        result = call()
        times = [common.timed(call)[0] for _ in range(1 if quick else 3)]
    out["step"] = min(times)
    out["step_runs"] = times
    np.save(outputs / f"{side}.npy", result.float().numpy())

    if e2e:
        from .predict_overhead import REQUEST, make_inputs

        inputs_dir = Path(tempfile.mkdtemp(prefix="bench-ov-inputs-"))
        for mode, overrides in cases(size):
            r = {**REQUEST, **overrides}
            if mode != "txt2img":
                r.update(make_inputs(inputs_dir, r["width"]))
                if mode == "img2img":
                    r["mask"] = None
            label = mode if r["refine"] == "no_refiner" else r["refine"]
            key = f"{label} {r['width']}x{r['height']} {r['num_inference_steps']} steps"
            warm_up = common.timed(lambda: p.predict(**r))[0]  # warm-up (OpenVINO: first inference at a new shape)
            out.setdefault("first_request", warm_up)  # the first request after setup: lazily read weights too
            runs = [common.timed(lambda: p.predict(**r))[0] for _ in range(1 if quick else 2)]
            out["modes"][key] = runs
        shutil.rmtree(inputs_dir, ignore_errors=True)
        if side == "int8" and size == "tiny":  # full size: OV + the torch UNet fp32 do not fit the RAM budget
            out["lora"] = lora_fallback(p, size)
    out["peak_rss"] = common.peak_rss()
    return out


def lora_fallback(p, size: str) -> dict:
    """The first LoRA request on OpenVINO (loads the torch UNet, applies the LoRA), a second one, back to base."""
    from devkit.reference_tars import reference_lora_tar

    from .predict_overhead import REQUEST

    tmp = Path(tempfile.mkdtemp(prefix="bench-ov-lora-"))
    os.environ["SDXL_LOCAL_WEIGHTS_DIR"] = str(tmp)  # the operator's opt-in for the tar named by path
    tar = reference_lora_tar(tmp / "lora.tar", p.models.base.unet.meta,  # shapes only: the torch UNet loads on use
                             te_dims=tuple(e.get_input_embeddings().embedding_dim for e in
                                           (p.models.base.text_encoder, p.models.base.text_encoder_2)))
    r = {**REQUEST, **cases(size)[0][1]}
    first = common.timed(lambda: p.predict(**{**r, "replicate_weights": str(tar)}))[0]
    again = common.timed(lambda: p.predict(**{**r, "replicate_weights": str(tar)}))[0]
    base = common.timed(lambda: p.predict(**r))[0]
    shutil.rmtree(tmp, ignore_errors=True)
    return {"first": first, "again": again, "base_after": base}


def child_main(argv) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument("--outputs", type=Path)
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.child.startswith("convert:"):
        result = child_convert(a.child.split(":", 1)[1])
    else:
        result = child_side(a.child, a.size, a.quick, a.outputs, not a.no_e2e, a.setup_only)
    a.json.write_text(json.dumps(result))


# ---------------------------------------------------------------- parent


def run_child(args: list[str], env: dict, cgroup: common.MemoryCgroup | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", "bench.openvino", *args, "--json", str(out)]
    started = time.monotonic()
    proc = subprocess.run(cgroup.wrap(cmd) if cgroup else cmd, cwd=common.REPO, env={**os.environ, **env})
    print(f"[bench] openvino {' '.join(args)}: {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    result = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    print(f"[bench] openvino {' '.join(args)}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def convert_in_cgroup(size: str, fp32_bytes: int, weights_dir: Path) -> dict | None:
    """The base UNet converted again (fp32 IR, then int8), into an empty IR cache, each stage inside a memory
    cgroup limited to TARGET_CONVERT_RSS x the fp32 UNet bytes: a machine with that much RAM. None where no
    cgroup can be made (or at tiny size, where python and torch alone pass the limit)."""
    if size != "full":
        return None
    limit = int(TARGET_CONVERT_RSS * fp32_bytes)
    cgroup = common.MemoryCgroup.make(limit)
    if cgroup is None:
        print("note: no memory cgroup here (needs root and cgroup v1 memory or v2): conversion not run under "
              "a memory limit", file=sys.stderr)
        return None
    cache = Path(tempfile.mkdtemp(prefix="bench-ov-cgroup-", dir=weights_dir))
    out: dict = {"limit": limit}
    try:
        for stage in ("unet-fp32", "unet-int8"):
            try:
                got = run_child(["--child", f"convert:{stage}", "--size", size], {"SDXL_OPENVINO_CACHE": str(cache)},
                                cgroup)
                out[stage] = {**got, "cgroup_peak": cgroup.peak()}
            except RuntimeError as e:  # killed by the cgroup's OOM killer
                out[stage] = {"failed": str(e), "cgroup_peak": cgroup.peak()}
                break
    finally:
        cgroup.close()
        shutil.rmtree(cache, ignore_errors=True)
    return out


def run(size: str, quick: bool) -> list[Row]:
    import numpy as np

    from . import full_weights

    root = common.use_weights(size, refiner=False)
    if size == "full":
        root = str(full_weights.without_refiner(Path(root)))  # the base is what is measured; the refiner: tiny
        os.environ["SDXL_WEIGHTS"] = root
    import weights

    cache = Path(tempfile.mkdtemp(prefix="bench-ov-cache-", dir=weights.resolve("sdxl-base")))
    outputs = Path(tempfile.mkdtemp(prefix="bench-ov-out-"))
    env = {"SDXL_OPENVINO_CACHE": str(cache)}
    area = f"openvino/{size}"
    rows: list[Row] = []
    try:
        conv = {stage: run_child(["--child", f"convert:{stage}", "--size", size], env)
                for stage in ("unet-fp32", "unet-int8", "rest", "refiner")}
        fp32_bytes = conv["unet-fp32"]["fp32_unet_bytes"]
        for stage, what in (("unet-fp32", "base UNet -> fp32 IR (torch.export + convert_model)"),
                            ("unet-int8", "fp32 IR -> int8 (nncf.compress_weights)")):
            c = conv[stage]
            rows.append(Row(area, f"convert {what}: time (info)", c["seconds"], None,
                            note=f"IR .bin {c['ir_bytes'] / GB:.2f} GB"))
            rows.append(Row(area, f"convert {what}: peak RSS vs fp32 UNet bytes (info)", c["peak_rss"], fp32_bytes,
                            unit="B", note=f"RSS counts the mmap'd weight files' pages; anonymous memory peak "
                                           f"{c['peak_anon'] / GB:.2f} GB"
                                           + (f"; {OPTIMUM_INTEL_NOTE}" if size == "full" else "")))
        limited = convert_in_cgroup(size, fp32_bytes, weights.resolve("sdxl-base"))
        if limited:
            for stage, what in (("unet-fp32", "base UNet -> fp32 IR"), ("unet-int8", "fp32 IR -> int8")):
                c = limited.get(stage)
                if c is None:
                    continue
                done = "failed" not in c
                rows.append(Row(area, f"convert {what} in a memory cgroup of {TARGET_CONVERT_RSS}x the fp32 UNet "
                                      f"bytes: cgroup peak vs fp32 UNet bytes",
                                c["cgroup_peak"] if done else None, fp32_bytes, TARGET_CONVERT_RSS, unit="B",
                                note=(f"completed in {c['seconds']:.1f} s, process peak RSS {c['peak_rss'] / GB:.2f} GB"
                                      if done else f"did not complete under {limited['limit'] / GB:.2f} GB: "
                                                   f"{c['failed']}")))
        rows.append(Row(area, "convert text encoders + VAE (decoder, encoder): time (info)", conv["rest"]["seconds"],
                        None, note=f"peak RSS {conv['rest']['peak_rss'] / GB:.2f} GB"))

        # the first start after conversion compiles the IR and writes OpenVINO's compiled-model cache
        got = {"first-start": run_child(["--child", "int8", "--size", size, "--setup-only"], {**env, **env_for("int8")})}
        notes = []
        for side in SIDES:
            args = ["--child", side, "--size", size, "--outputs", str(outputs)] + (["--quick"] if quick else [])
            if side == "int8-f32" or size == "full" and side == "fp32":
                args.append("--no-e2e")
            extra = {}
            if size == "full" and side == "torch":
                # torch fp32 end to end: UNet 10.3 GB + text encoders 2.8 GB + VAE + activations, ~15 GB anonymous
                if common.free_ram() >= TORCH_FP32_FREE_RAM * GB:
                    extra = {"BENCH_RSS_LIMIT_GB": os.environ.get("BENCH_RSS_LIMIT_GB", str(TORCH_FP32_FREE_RAM - 2))}
                else:  # the UNet alone; setup() timed in a second child loading fp16 (a lower bound)
                    args.append("--no-e2e")
                    notes.append(f"torch fp32 end to end not run at full size: {common.free_ram() / GB:.1f} GB RAM "
                                 f"available, it needs {TORCH_FP32_FREE_RAM} GB; torch setup() measured loading fp16")
                    got["torch-setup"] = run_child(["--child", "torch", "--size", size, "--setup-only"],
                                                   {**env, **env_for("torch")})
            got[side] = run_child(args, {**env, **env_for(side), **extra})
        if "torch-setup" in got:
            got["torch"].update({k: got["torch-setup"][k] for k in ("setup", "setup_rss", "dropped")})
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        torch_ = got["torch"]
        for side in ("int8", "int8-f32", "fp32"):
            g = got[side]
            rows.append(Row(area, f"UNet step {side} vs torch fp32 (batch 2, 256x256)", g["step"], torch_["step"],
                            TARGET_STEP if side == "int8" else None,
                            note=f"runs ov {'/'.join(f'{t:.3f}' for t in g['step_runs'])} s, torch "
                                 f"{'/'.join(f'{t:.3f}' for t in torch_['step_runs'])} s"))
            ref = np.load(outputs / "torch.npy").ravel().astype(np.float64)
            out = np.load(outputs / f"{side}.npy").ravel().astype(np.float64)
            cosine = float(ref @ out / np.linalg.norm(ref) / np.linalg.norm(out))
            rel_rms = float(np.sqrt(np.mean((out - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)))
            rows.append(Row(area, f"UNet output {side} vs torch fp32: cosine (info)", cosine, None, unit="",
                            note=f"relative RMS {rel_rms:.2e}"))
        for key, runs in got["int8"]["modes"].items():
            t_runs = torch_["modes"].get(key)
            if not t_runs:
                rows.append(Row(area, f"end to end int8: {key} (torch fp32: no room)", min(runs), None, note="; ".join(notes)))
                continue
            rows.append(Row(area, f"end to end int8 vs torch fp32: {key}", min(runs), min(t_runs), TARGET_E2E,
                            note=f"runs ov {'/'.join(f'{t:.2f}' for t in runs)} s, torch "
                                 f"{'/'.join(f'{t:.2f}' for t in t_runs)} s"))
            if got["fp32"]["modes"].get(key):
                rows.append(Row(area, f"end to end fp32 IR vs torch fp32: {key} (info)", min(got["fp32"]["modes"][key]),
                                min(t_runs)))
        lower_bound = "; torch loaded fp16 (lower bound)" if "torch-setup" in got else ""
        rows.append(Row(area, "first start after conversion: setup() compiles the IR and caches it, vs torch "
                              "setup() (info)", got["first-start"]["setup"], torch_["setup"],
                        note=f"page cache dropped: {got['first-start']['dropped']}{lower_bound}"))
        for side in [s for s in ("int8", "fp32") if "setup" in got[s]]:
            rows.append(Row(area, f"cold start setup(), {side} IR and compiled model cached, vs torch setup()",
                            got[side]["setup"], torch_["setup"], TARGET_COLD if side == "int8" else None,
                            note=f"page cache dropped: {got[side]['dropped']}{lower_bound}"))
            if "first_request" in got[side] and "first_request" in torch_:
                rows.append(Row(area, f"cold start setup() + first request, {side} vs torch (info)",
                                got[side]["setup"] + got[side]["first_request"],
                                torch_["setup"] + torch_["first_request"],
                                note=f"first request: {got[side]['first_request']:.2f} s vs "
                                     f"{torch_['first_request']:.2f} s (OpenVINO reads its mmap'd compiled weights "
                                     f"on first use)"))
            rows.append(Row(area, f"process peak RSS {side} vs torch (info)", got[side]["peak_rss"],
                            torch_["peak_rss"], unit="B",
                            note=f"after setup: {got[side]['setup_rss'] / GB:.2f} GB vs {torch_['setup_rss'] / GB:.2f} GB"))
        lora = got["int8"].get("lora")
        if lora:
            rows.append(Row(area, "LoRA request on OpenVINO (torch UNet fallback): first, vs a base request (info)",
                            lora["first"], lora["base_after"],
                            note=f"again {lora['again']:.2f} s; loads the torch UNet once and keeps it"))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(outputs, ignore_errors=True)
    return rows


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        return child_main(argv)
    a = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.write_rows(run(a.size, a.quick), a.out)


if __name__ == "__main__":
    sys.exit(main())
