"""Cold start: Predictor.setup() versus plain ``from_pretrained`` of the same pipelines versus reading the same
bytes from disk; peak memory versus the bytes of the distinct weights.

Each figure runs in its own process (``--what read|plain|setup``) so its peak RSS is its own. The page cache is
dropped before each when the sandbox allows it (else all three run warm, after a warming read, and say so).
The dtype is fp16, the production GPU dtype: the fp16 files load without conversion. diffusers may leave such
tensors memory-mapped, not yet read; so every side ends by touching every weight byte (a reduction over each
tensor), and the figure is "time until the weights are resident and usable".
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from . import common
from .common import Row

NAMES = ("sdxl-base", "sdxl-refiner", "safety-checker")


def weight_files(root: Path) -> list[Path]:
    return sorted(f for name in NAMES for f in (root / name).resolve().rglob("*.safetensors"))


def touch(modules) -> None:
    with torch.no_grad():
        for m in modules:
            for t in (*m.parameters(), *m.buffers()):
                t.float().sum() if t.numel() < 2**20 else t.view(-1)[:: 512].float().sum()


def read_bytes(root: Path) -> int:
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    total = 0
    for f in weight_files(root):
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total


def plain(root: Path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    base = StableDiffusionXLPipeline.from_pretrained(root / "sdxl-base", dtype=torch.float16, variant="fp16",
                                                     use_safetensors=True, add_watermarker=False)
    refiner_unet = UNet2DConditionModel.from_pretrained(root / "sdxl-refiner", subfolder="unet", variant="fp16",
                                                        dtype=torch.float16, use_safetensors=True)
    safety = StableDiffusionSafetyChecker.from_pretrained(root / "safety-checker", dtype=torch.float16)
    return [base.unet, base.vae, base.text_encoder, base.text_encoder_2, refiner_unet, safety]


def ours():
    common.force_dtype(torch.float16)
    from predict import Predictor

    p = Predictor()
    p.setup()
    m = p.models
    return [m.base.unet, m.base.vae, m.base.text_encoder, m.base.text_encoder_2, m.refiner.unet, m.safety.model]


def child(what: str, root: Path) -> dict:
    common.rss_guard()
    # libraries imported before the cache is dropped: the figure is the weights, not python's imports
    import diffusers  # noqa: F401
    import predict  # noqa: F401
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

    dropped = common.drop_page_cache()
    start = time.perf_counter()
    if what == "read":
        read_bytes(root)
    else:
        modules = plain(root) if what == "plain" else ours()
        touch(modules)
    seconds = time.perf_counter() - start
    dtype = "" if what == "read" else str(modules[0].dtype).replace("torch.", "")  # the base UNet's, after loading
    return {"seconds": seconds, "peak_rss": common.peak_rss(), "dropped": dropped, "unet_dtype": dtype}


def run(size: str, quick: bool) -> list[Row]:
    import json
    import subprocess

    root = Path(os.environ["SDXL_WEIGHTS"]) if size == "full" else None
    if root is None:
        import weights

        root = Path(weights.local_dir("sdxl-base")).parent
        for name in NAMES:
            weights.resolve(name)
        root = _tiny_root(root)
    nbytes = sum(f.stat().st_size for f in weight_files(root))
    repeats = 1 if size == "full" or quick else 3
    if not common.drop_page_cache():
        read_bytes(root)  # warm the cache so that all three are measured alike
    results: dict[str, dict] = {}
    for what in ("read", "plain", "setup"):
        best = None
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-m", "bench.cold_start", "--child", what, "--root", str(root)],
                                 cwd=common.REPO, capture_output=True, text=True, env={**os.environ})
            if out.returncode != 0:
                raise RuntimeError(f"cold_start --child {what} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            best = r if best is None or r["seconds"] < best["seconds"] else best
        results[what] = best
    cache = "page cache dropped before each" if results["read"]["dropped"] else "WARM page cache (drop_caches refused)"
    area = f"cold/{size}"
    full = size == "full"  # tiny weights are a few MB: fixed costs dominate, the targets do not apply
    read_s = results["read"]["seconds"]
    return [
        Row(area, "read the weight bytes", read_s, None, note=f"{nbytes / common.GB:.2f} GB, {cache}, "
            f"{nbytes / read_s / common.GB:.2f} GB/s"),
        Row(area, "setup() vs disk read", results["setup"]["seconds"], read_s, target=1.3 if full else None,
            note=f"fp16 files, base UNet {results['setup']['unet_dtype']} after setup, weights touched"),
        Row(area, "plain from_pretrained vs disk read", results["plain"]["seconds"], read_s, note="fp16, weights touched"),
        Row(area, "setup() vs plain from_pretrained", results["setup"]["seconds"], results["plain"]["seconds"]),
        Row(area, "setup() peak RSS vs weight bytes", results["setup"]["peak_rss"], nbytes, target=1.15 if full else None, unit="B",
            note="RSS counts mmap'd file pages too; includes ~0.5 GB of python+torch"),
        Row(area, "plain peak RSS vs weight bytes", results["plain"]["peak_rss"], nbytes, unit="B"),
    ]


def _tiny_root(tiny_cache: Path) -> Path:
    """The tiny sets under the names a local-directory source uses."""
    root = tiny_cache / "bench-tiny-layout"
    root.mkdir(exist_ok=True)
    import weights

    for name in NAMES:
        if not (root / name).exists():
            (root / name).symlink_to(weights.local_dir(name), target_is_directory=True)
    return root


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["read", "plain", "setup"])
    ap.add_argument("--root", type=Path)
    a = ap.parse_args(argv)
    if a.child:
        import json

        os.environ["SDXL_WEIGHTS"] = str(a.root)
        print(json.dumps(child(a.child, a.root)))
        return
    if a.device == "cuda":
        print("cold_start: --device cuda measures the same loads (fp16 is the GPU dtype); the .to('cuda') copy is in "
              "setup() and not in the disk-read figure", file=sys.stderr)
    common.use_weights(a.size)
    common.write_rows(run(a.size, a.quick), a.out)


if __name__ == "__main__":
    sys.exit(main())
