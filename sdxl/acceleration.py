"""The GPU fast path: what diffusers recommends for SDXL on CUDA, on by default there, plus opt-ins.

On CUDA, by default: SDPA attention (diffusers' AttnProcessor2_0: flash / memory-efficient kernels),
TF32 for fp32 matmuls and convolutions, cuDNN autotuning, channels_last UNets and VAE, and fused QKV projections in
the UNets while no trained weights are applied (a LoRA wraps the separate to_q/to_k/to_v layers, and
a full fine-tune changes them, so they are unfused first and fused again after unloading).

Opt-in, by environment variable (operators set them; they are not request inputs):

- ``SDXL_COMPILE=1``: ``torch.compile`` of both UNets and the VAE decoder, warmed up at setup. The
  compiled artifacts (inductor's FX graph / AOTAutograd caches, triton kernels) are kept beside the
  weights (``SDXL_COMPILE_CACHE``, default ``<weights dir>/torch-compile-cache``) so a second cold
  start does not compile again. QKV stays unfused, and LoRAs are hot-swapped into one adapter
  (diffusers ``enable_lora_hotswap``; ranks up to ``SDXL_LORA_MAX_RANK``, default 64) so that
  switching LoRAs, or back to the base model (a zero LoRA), does not recompile.
- ``SDXL_CPU_OFFLOAD=1``: diffusers' model CPU offload (one model on the GPU at a time), for small GPUs,
  as the SDXL model card suggests.

Any device: the VAE decodes in tiles when an image has more than ``VAE_TILING_ABOVE`` pixels.
On the CPU nothing else changes: images stay bitwise those of plain diffusers.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

COMPILE_ENV = "SDXL_COMPILE"
OFFLOAD_ENV = "SDXL_CPU_OFFLOAD"
COMPILE_CACHE_ENV = "SDXL_COMPILE_CACHE"
LORA_MAX_RANK_ENV = "SDXL_LORA_MAX_RANK"
DEFAULT_LORA_MAX_RANK = 64  # the trainer's default is 32; a higher rank costs every step a little
VAE_TILING_ABOVE = 2048 * 2048  # pixels; larger decodes need more memory than an A40-class card has to spare
WARM_UP_SIZE = 1024  # the size the compiled UNets are traced for at setup (the default request size)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offload_requested(device: str) -> bool:
    return device == "cuda" and _flag(OFFLOAD_ENV)


def load_device(device: str) -> str:
    """Where the pipelines are loaded: with CPU offload they stay on the CPU (the hooks move each model)."""
    return "cpu" if offload_requested(device) else device


@dataclass
class Acceleration:
    """What the fast path did to the shared models, and the switches LoRA loading needs."""

    device: str
    fuse_qkv: bool = False  # fuse the UNets' QKV projections while no trained weights are applied
    fused: bool = False  # ... and they are fused now
    compiled: bool = False
    offload: bool = False
    hotswap: bool = False  # LoRAs go into one hot-swapped adapter (compile: no recompilation)
    compile_cache: Path | None = None

    def unets(self, models) -> list:
        return [models.base.unet, models.refiner.unet]

    def unfuse(self, models) -> None:
        """Before trained weights change the UNet: the separate projections are the live ones again."""
        if self.fused:
            for unet in self.unets(models):
                unet.unfuse_qkv_projections()
            self.fused = False

    def fuse(self, models) -> None:
        """Fuse the QKV projections (from the current weights), where the fast path does that."""
        if self.fuse_qkv and not self.fused:
            for unet in self.unets(models):
                unet.fuse_qkv_projections()
            self.fused = True


def accelerate(models, *, compile: bool | None = None, offload: bool | None = None) -> Acceleration:
    """Apply the fast path to freshly loaded ``models`` (sdxl.models.Models); a no-op on the CPU."""
    speed = Acceleration(device=models.device)
    if models.device != "cuda":
        return speed
    compile = _flag(COMPILE_ENV) if compile is None else compile
    speed.offload = offload_requested(models.device) if offload is None else offload
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # the convolution algorithm picked per shape, once (requests repeat sizes)
    for module in (*speed.unets(models), models.base.vae):
        module.to(memory_format=torch.channels_last)
    if speed.offload:
        _offload(models)
    if compile:
        _compile(models, speed)
    else:
        speed.fuse_qkv = True
        speed.fuse(models)
    log.info("fast path on %s: SDPA, TF32, channels_last%s%s%s", models.device,
             ", fused QKV" if speed.fused else "", ", compiled (LoRA hot-swap)" if speed.compiled else "",
             ", model CPU offload" if speed.offload else "")
    return speed


def _offload(models) -> None:
    """Model CPU offload over the base and refiner pipelines (img2img/inpaint share the base's modules,
    and with them its hooks)."""
    models.base.enable_model_cpu_offload(device=models.device)
    models.refiner.enable_model_cpu_offload(device=models.device)


def compile_cache_dir() -> Path:
    configured = os.environ.get(COMPILE_CACHE_ENV)
    if configured:
        return Path(configured)
    import weights

    return weights.resolve("sdxl-base").parent / "torch-compile-cache"


def _use_compile_cache(path: Path) -> Path | None:
    """Point inductor's and triton's on-disk caches at ``path`` (an operator's own settings win)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("compile cache %s is not writable (%s): compiling into the default cache", path, e.strerror)
        return None
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(path / "triton"))
    return path


def lora_max_rank() -> int:
    try:
        return max(1, int(os.environ.get(LORA_MAX_RANK_ENV, DEFAULT_LORA_MAX_RANK)))
    except ValueError:
        return DEFAULT_LORA_MAX_RANK


def _compile(models, speed: Acceleration) -> None:
    speed.compile_cache = _use_compile_cache(compile_cache_dir())
    # The compiled base UNet carries one adapter from the start (a zero LoRA: the base output exactly);
    # every LoRA is hot-swapped into it (padded to the highest rank), so none changes the graph.
    models.base.enable_lora_hotswap(target_rank=lora_max_rank())
    models.base.load_lora_weights(zero_lora(models.base.unet, lora_max_rank()), adapter_name=ADAPTER)
    speed.hotswap = True
    for unet in speed.unets(models):
        unet.compile()
    models.base.vae.decoder.compile()
    speed.compiled = True
    warm_up(models)


ADAPTER = "replicate_weights"  # the one adapter trained weights are loaded (or swapped) into
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections the trainer and reference LoRAs adapt


def zero_lora(unet, rank: int) -> dict[str, torch.Tensor]:
    """A peft-format LoRA of ``rank`` on every attention projection of ``unet``, all zeros."""
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS) and ".attn" in name:
            p = module.weight
            state[f"unet.{name}.lora_A.weight"] = torch.zeros(rank, module.in_features, device=p.device, dtype=p.dtype)
            state[f"unet.{name}.lora_B.weight"] = torch.zeros(module.out_features, rank, device=p.device, dtype=p.dtype)
    return state


def leave_hotswap(models, speed: Acceleration) -> None:
    """A LoRA that does not fit the compiled adapter (other layers): back to plain loading (it recompiles)."""
    log.warning("this LoRA adapts layers the compiled adapter does not have: loading it anew (the UNet recompiles)")
    models.base.unload_lora_weights()
    models.base.unet._prepare_lora_hotswap_kwargs = None
    speed.hotswap = False


def warm_up(models) -> None:
    """Trace and compile the base UNet and the VAE decoder at setup, not in the first request."""
    start = time.monotonic()
    generator = torch.Generator(models.device).manual_seed(0)
    size = WARM_UP_SIZE
    models.base(prompt="", num_inference_steps=1, width=size, height=size, generator=generator)
    log.info("compiled (warm-up at %dx%d) in %.1fs", size, size, time.monotonic() - start)


def prepare_decode(models, width: int, height: int) -> None:
    """VAE tiling for the images that need it (it changes the decode slightly: only then)."""
    vae = models.base.vae
    if width * height > VAE_TILING_ABOVE:
        log.info("%dx%d: the VAE decodes in tiles", width, height)
        vae.enable_tiling()
    else:
        vae.disable_tiling()
