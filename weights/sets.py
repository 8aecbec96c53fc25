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
    # sub-folder -> "owner/repo" (the whole repo is that folder) or "owner/repo/folder" (one folder of it)
    hf_overlays: dict[str, str] = field(default_factory=dict)
    hf_patterns: tuple[str, ...] = ("*.json", "*.txt", "*.safetensors")
    hf_files: dict[str, str] = field(default_factory=dict)  # file name -> repo holding it (e.g. a UNet file)


SDXL_BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
FP16_FIX_VAE_REPO = "madebyollin/sdxl-vae-fp16-fix"
# what a few-step model shares with SDXL base: the same text encoders and tokenizers, and the fp16-fix VAE
SDXL_SHARED_OVERLAYS = {
    **{sub: f"{SDXL_BASE_REPO}/{sub}" for sub in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")},
    "vae": FP16_FIX_VAE_REPO,
}
# a pipeline directory's small files, without any weights (the few-step sets take the UNet from elsewhere)
PIPELINE_CONFIGS = ("model_index.json", "scheduler/*.json", "unet/config.json")


WEIGHT_SETS: dict[str, WeightSet] = {
    s.name: s
    for s in (
        WeightSet(
            "sdxl-base",
            "SDXL 1.0 base with the fp16-fix VAE",
            "https://weights.replicate.delivery/default/sdxl/sdxl-vae-upcast-fix.tar",
            SDXL_BASE_REPO,
            "weights.tiny_sdxl:make_base",
            hf_overlays={"vae": FP16_FIX_VAE_REPO},
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
            "sdxl-turbo",
            "SDXL-Turbo (its UNet and scheduler; SDXL base's text encoders and the fp16-fix VAE)",
            None,
            "stabilityai/sdxl-turbo",  # only these folders: the repo also holds ~40 GB of single-file/ONNX copies
            "weights.tiny_fewstep:make_turbo",
            hf_overlays=SDXL_SHARED_OVERLAYS,
            hf_patterns=(*PIPELINE_CONFIGS, "unet/diffusion_pytorch_model.fp16.safetensors"),
        ),
        *(
            WeightSet(
                f"sdxl-lightning-{steps}step",
                f"SDXL-Lightning {steps}-step UNet on SDXL base's pipeline (text encoders, fp16-fix VAE)",
                None,
                SDXL_BASE_REPO,
                f"weights.tiny_fewstep:make_lightning_{steps}step",
                hf_overlays=SDXL_SHARED_OVERLAYS,
                hf_patterns=PIPELINE_CONFIGS,
                hf_files={f"sdxl_lightning_{steps}step_unet.safetensors": "ByteDance/SDXL-Lightning"},
            )
            for steps in (4, 8)
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
        files = "".join(f" + {name} from {repo}" for name, repo in ws.hf_files.items())
        return f"huggingface {ws.hf_repo}{overlays}{files}"
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
        tar = download(ws.url, dest.parent / f".{name}.tar", input_name=name)
        try:
            return extract_tar(tar, dest, input_name=name)
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
    for sub, source in ws.hf_overlays.items():
        owner, name, *folder = source.split("/", 2)
        if folder:  # one folder of a repo: fetch only that folder (huggingface_hub's cache shares it between sets)
            snapshot = _snapshot(f"{owner}/{name}", tuple(f"{folder[0]}/{p}" for p in FOLDER_OVERLAY_PATTERNS))
            (out / sub).symlink_to(snapshot / folder[0])
        else:
            (out / sub).symlink_to(_snapshot(source, OVERLAY_PATTERNS))
    for file_name, repo in ws.hf_files.items():
        from huggingface_hub import hf_hub_download

        (out / file_name).symlink_to(Path(hf_hub_download(repo, file_name)).resolve())


OVERLAY_PATTERNS = ("*.json", "*.txt", "*.safetensors")
# the sets with folder overlays (the few-step models) ship fp16 UNets, so their pipelines load the fp16 variant
FOLDER_OVERLAY_PATTERNS = ("*.json", "*.txt", "*.fp16.safetensors")


def _snapshot(repo: str, patterns: tuple[str, ...]) -> Path:
    """A snapshot with safetensors weights; repos that publish only ``.bin`` files get those
    (transformers/diffusers read them with ``weights_only=True``: no arbitrary unpickling).
    Patterns that ask for no weights at all (configs only) get none."""
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(repo, allow_patterns=list(patterns)))
    # the .bin twin of each weights pattern: a folder's patterns never reach another folder's files
    bin_patterns = [p.removesuffix(".safetensors") + ".bin" for p in patterns if p.endswith(".safetensors")]
    if bin_patterns and not any(snapshot.rglob("*.safetensors")):
        log.info("%s has no safetensors weights; fetching its .bin weights", repo)
        snapshot = Path(snapshot_download(repo, allow_patterns=[*patterns, *bin_patterns]))
    return snapshot
