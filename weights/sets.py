"""Every weight set the project loads, where each comes from, and how to get it onto disk.

``SDXL_WEIGHTS`` picks the source for all of them:

- unset or ``replicate``: the production tars (as Replicate's stability-ai/sdxl uses), downloaded
  once into ``SDXL_WEIGHTS_DIR`` (default ``./weights-cache``); a directory already there is used.
- ``huggingface``: the Hugging Face repos, through huggingface_hub and its cache
  (``HF_HOME``, ``HF_HUB_OFFLINE`` work as usual).
- ``tiny``: small SDXL-architecture models generated here deterministically (they make noise,
  not pictures), cached in ``SDXL_TINY_DIR`` (default ``~/.cache/cog-sdxl/tiny``).
- any other value: a local directory holding one sub-directory per weight set name.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .archive import extract_tar
from .download import download

log = logging.getLogger(__name__)

TINY_VERSION = "2"  # bump when a tiny generator changes, so stale caches are not reused
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class WeightSet:
    name: str
    description: str
    url: str | None  # production tar
    hf_repo: str | None
    tiny: str  # "module:function" writing the tiny flavour into a directory
    hf_overlays: dict[str, str] = field(default_factory=dict)  # sub-folder -> repo replacing it
    hf_patterns: tuple[str, ...] = ("*.json", "*.txt", "*.safetensors")


WEIGHT_SETS: dict[str, WeightSet] = {
    s.name: s
    for s in (
        WeightSet(
            "sdxl-base",
            "SDXL 1.0 base with the fp16-fix VAE",
            "https://weights.replicate.delivery/default/sdxl/sdxl-vae-upcast-fix.tar",
            "stabilityai/stable-diffusion-xl-base-1.0",
            "weights.tiny_sdxl:make_base",
            hf_overlays={"vae": "madebyollin/sdxl-vae-fp16-fix"},
        ),
        WeightSet(
            "sdxl-refiner",
            "SDXL 1.0 refiner (UNet; shares the base's VAE and text_encoder_2)",
            "https://weights.replicate.delivery/default/sdxl/refiner-no-vae-no-encoder-1.0.tar",
            "stabilityai/stable-diffusion-xl-refiner-1.0",
            "weights.tiny_sdxl:make_refiner",
        ),
        WeightSet(
            "safety-checker",
            "Stable Diffusion safety checker and its CLIP feature extractor",
            "https://weights.replicate.delivery/default/sdxl/safety-1.0.tar",
            "CompVis/stable-diffusion-safety-checker",
            "weights.tiny_sdxl:make_safety",
        ),
        WeightSet(
            "blip",
            "BLIP captioner (large), for training captions",
            None,
            "Salesforce/blip-image-captioning-large",
            "weights.tiny_aux:make_blip",
        ),
        WeightSet(
            "clipseg",
            "CLIPSeg rd64-refined, for training masks",
            None,
            "CIDAS/clipseg-rd64-refined",
            "weights.tiny_aux:make_clipseg",
        ),
        WeightSet(
            "swin2sr",
            "Swin2SR x4 real-world super-resolution, for upscaling small training images",
            None,
            "caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr",
            "weights.tiny_aux:make_swin2sr",
        ),
    )
}


def flavour() -> str:
    return os.environ.get("SDXL_WEIGHTS", "").strip() or "replicate"


def is_tiny() -> bool:
    return flavour() == "tiny"


def source(name: str) -> str:
    """Where ``name`` comes from under the current SDXL_WEIGHTS, in words."""
    ws = WEIGHT_SETS[name]
    f = flavour()
    if f == "tiny":
        return f"generated ({ws.tiny}, seeded)"
    if f == "huggingface" or (f == "replicate" and ws.url is None):
        overlays = "".join(f" + {sub} from {repo}" for sub, repo in ws.hf_overlays.items())
        return f"huggingface {ws.hf_repo}{overlays}"
    if f == "replicate":
        return ws.url
    return f"local directory {Path(f) / name}"


def local_dir(name: str) -> Path:
    """Where ``name`` is (or would be) on disk under the current SDXL_WEIGHTS."""
    ws = WEIGHT_SETS[name]
    f = flavour()
    if f == "tiny":
        root = Path(os.environ.get("SDXL_TINY_DIR", Path.home() / ".cache" / "cog-sdxl" / "tiny"))
        return root / f"{name}-v{TINY_VERSION}"
    if f == "huggingface" or (f == "replicate" and ws.url is None):
        root = Path(os.environ.get("SDXL_WEIGHTS_DIR", REPO_ROOT / "weights-cache"))
        return root / "huggingface" / name
    if f == "replicate":
        return Path(os.environ.get("SDXL_WEIGHTS_DIR", REPO_ROOT / "weights-cache")) / name
    return Path(f) / name


def resolve(name: str) -> Path:
    """Return a local directory holding weight set ``name``, fetching or generating it if needed."""
    if name not in WEIGHT_SETS:
        raise KeyError(f"unknown weight set {name!r}; known: {', '.join(WEIGHT_SETS)}")
    ws = WEIGHT_SETS[name]
    dest = local_dir(name)
    if dest.is_dir():
        return dest
    f = flavour()
    if f == "tiny":
        module, function = ws.tiny.split(":")
        log.info("generating tiny weights %s into %s", name, dest)
        return _build(dest, getattr(importlib.import_module(module), function))
    if f == "huggingface" or (f == "replicate" and ws.url is None):
        return _build(dest, lambda tmp: _link_hf(ws, tmp))
    if f == "replicate":
        log.info("downloading %s from %s", name, ws.url)
        tar = download(ws.url, dest.parent / f".{name}.tar", what=name)
        try:
            return extract_tar(tar, dest, what=name)
        finally:
            tar.unlink(missing_ok=True)
    raise FileNotFoundError(f"SDXL_WEIGHTS={f}: no directory {dest} for weight set {name!r}")


def _build(dest: Path, make) -> Path:
    """Run ``make(tmp_dir)`` and move the result to ``dest`` atomically (safe under parallel tests)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        make(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # someone else won the race: theirs is identical
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _link_hf(ws: WeightSet, out: Path) -> None:
    """Lay out a Hugging Face snapshot (plus overlays, e.g. the fp16-fix VAE) as symlinks in ``out``."""
    snapshot = _snapshot(ws.hf_repo, ws.hf_patterns)
    for entry in snapshot.iterdir():
        if entry.name not in ws.hf_overlays:
            (out / entry.name).symlink_to(entry.resolve() if entry.is_file() else entry)
    for sub, repo in ws.hf_overlays.items():
        (out / sub).symlink_to(_snapshot(repo, ws.hf_patterns))


def _snapshot(repo: str, patterns: tuple[str, ...]) -> Path:
    """A snapshot with safetensors weights; repos that publish only ``.bin`` files get those
    (transformers/diffusers read them with ``weights_only=True``: no arbitrary unpickling)."""
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(repo, allow_patterns=list(patterns)))
    if not any(snapshot.rglob("*.safetensors")):
        log.info("%s has no safetensors weights; fetching its .bin weights", repo)
        snapshot = Path(snapshot_download(repo, allow_patterns=[*patterns, "*.bin"]))
    return snapshot
