"""Full-size SDXL weights with RANDOM init, in the production on-disk layout, generated once.

The architectures are the real SDXL 1.0 configs (written out below, not downloaded): the base UNet
(2.57 B parameters), the refiner UNet (2.3 B), CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders
and the SDXL VAE. Weights are random (fan-in scaled normal, norms at 1, biases at 0) and saved as fp16
``variant="fp16"`` safetensors in diffusers folders, exactly like the production tars, into
``$SDXL_BENCH_DIR`` (default ``~/.cache/cog-sdxl/bench-full``), outside the repository.

One deviation: the tokenizers are the tiny generated ones (no model hub here), so both text encoders
use ``vocab_size = len(tiny tokenizer)`` (665) instead of 49408. That removes 38 M + 63 M embedding
parameters (~0.2 GB in fp16) of ~3.5 B; every other shape is the real one.

The directory holds ``sdxl-base/``, ``sdxl-refiner/`` and ``safety-checker/`` (a symlink to the tiny
checker), so ``SDXL_WEIGHTS=<dir>`` points the predictor at it (a local-directory weight source).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

VERSION = "1"

UNET_BASE = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids * 256 + 1280 pooled
    "resnet_out_scale_factor": 1.0,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_embedding_type": "positional",
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

UNET_REFINER = {
    **UNET_BASE,
    "attention_head_dim": [6, 12, 24, 24],
    "block_out_channels": [384, 768, 1536, 1536],
    "cross_attention_dim": 1280,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "projection_class_embeddings_input_dim": 2560,  # 5 time ids (with aesthetic score) * 256 + 1280
    "transformer_layers_per_block": 4,
}

VAE = {  # the SDXL VAE (the fp16-fix flavour: force_upcast off)
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}

TEXT_ENCODER = dict(  # CLIP ViT-L/14 text tower
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
TEXT_ENCODER_2 = dict(  # OpenCLIP ViT-bigG/14 text tower, with projection
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)


def default_dir() -> Path:
    return Path(os.environ.get("SDXL_BENCH_DIR", Path.home() / ".cache" / "cog-sdxl" / "bench-full")) / f"v{VERSION}"


def _tiny_dir(name: str) -> Path:
    import weights

    old = os.environ.get("SDXL_WEIGHTS")
    os.environ["SDXL_WEIGHTS"] = "tiny"
    try:
        return weights.resolve(name)
    finally:
        if old is None:
            del os.environ["SDXL_WEIGHTS"]
        else:
            os.environ["SDXL_WEIGHTS"] = old


def _random_state(model, seed: int) -> dict[str, torch.Tensor]:
    """fp16 random tensors for every state-dict entry of a meta-device ``model``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if t.dtype in (torch.int64, torch.int32):
            out[name] = torch.arange(shape[-1]).expand(shape).contiguous() if shape else torch.zeros((), dtype=t.dtype)
        elif name.endswith("bias"):
            out[name] = torch.zeros(shape, dtype=torch.float16)
        elif len(shape) <= 1:  # norm scales, logit scales
            out[name] = torch.ones(shape, dtype=torch.float16)
        else:
            fan_in = math.prod(shape[1:])
            out[name] = (torch.randn(shape, generator=g) / math.sqrt(fan_in)).to(torch.float16)
    return out


def _write(model, state: dict[str, torch.Tensor], folder: Path, weights_name: str) -> int:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_config"):  # diffusers
        model.save_config(folder)
    else:  # transformers
        model.config.save_pretrained(folder)
    save_file(state, folder / weights_name, metadata={"format": "pt"})
    return sum(t.numel() for t in state.values())


def _diffusers_model(cls, config: dict, folder: Path, seed: int) -> int:
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls.from_config(config)
    return _write(model, _random_state(model, seed), folder, "diffusion_pytorch_model.fp16.safetensors")


def _text_model(cls, dims: dict, tokenizer_dir: Path, folder: Path, seed: int) -> int:
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    config = CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, **dims)
    config.dtype = "float16"
    with init_empty_weights():
        model = cls(config)
    return _write(model, _random_state(model, seed), folder, "model.fp16.safetensors")


def make(root: Path | None = None, refiner: bool = True, log=print) -> Path:
    """Generate (once) and return the directory for ``SDXL_WEIGHTS``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = Path(root or default_dir())
    tiny_base, tiny_refiner, tiny_safety = (_tiny_dir(n) for n in ("sdxl-base", "sdxl-refiner", "safety-checker"))
    root.mkdir(parents=True, exist_ok=True)
    safety = root / "safety-checker"
    if not safety.exists():
        safety.symlink_to(tiny_safety, target_is_directory=True)

    base = root / "sdxl-base"
    if not (base / ".done").exists():
        started = time.monotonic()
        tmp = root / ".sdxl-base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for sub in ("tokenizer", "tokenizer_2", "scheduler"):
            shutil.copytree(tiny_base / sub, tmp / sub)
        shutil.copy(tiny_base / "model_index.json", tmp / "model_index.json")
        n = _text_model(CLIPTextModel, TEXT_ENCODER, tiny_base / "tokenizer", tmp / "text_encoder", 1)
        n += _text_model(CLIPTextModelWithProjection, TEXT_ENCODER_2, tiny_base / "tokenizer_2", tmp / "text_encoder_2", 2)
        n += _diffusers_model(AutoencoderKL, VAE, tmp / "vae", 3)
        n += _diffusers_model(UNet2DConditionModel, UNET_BASE, tmp / "unet", 4)
        (tmp / ".done").write_text(str(n))
        shutil.rmtree(base, ignore_errors=True)
        tmp.rename(base)
        log(f"full-size sdxl-base: {n / 1e9:.2f} B parameters written to {base} in {time.monotonic() - started:.0f}s")

    ref = root / "sdxl-refiner"
    if refiner and not (ref / ".done").exists():
        started = time.monotonic()
        tmp = root / ".sdxl-refiner.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for sub in ("tokenizer_2", "scheduler"):
            shutil.copytree(tiny_refiner / sub, tmp / sub)
        shutil.copy(tiny_refiner / "model_index.json", tmp / "model_index.json")
        n = _diffusers_model(UNet2DConditionModel, UNET_REFINER, tmp / "unet", 5)
        (tmp / ".done").write_text(str(n))
        if ref.is_symlink():  # the tiny stand-in an earlier run without the full refiner linked here
            ref.unlink()
        shutil.rmtree(ref, ignore_errors=True)
        tmp.rename(ref)
        log(f"full-size sdxl-refiner: {n / 1e9:.2f} B parameters written to {ref} in {time.monotonic() - started:.0f}s")
    elif not refiner and not ref.exists():
        # setup() always loads a refiner: without the full one, the tiny one stands in (and refiner modes are skipped)
        ref.symlink_to(tiny_refiner, target_is_directory=True)
    return root


def without_refiner(root: Path) -> Path:
    """A sibling directory with the same full-size base and the TINY refiner (setup() always loads a refiner):
    for the figures that do not need the refiner, in half the memory."""
    root = Path(root)
    alt = root.parent / (root.name + "-tiny-refiner")
    alt.mkdir(exist_ok=True)
    for name, target in (("sdxl-base", root / "sdxl-base"), ("safety-checker", root / "safety-checker"),
                         ("sdxl-refiner", _tiny_dir("sdxl-refiner"))):
        link = alt / name
        if link.is_symlink() and link.resolve() != target.resolve():  # a dangling or stale link (a removed tiny set)
            link.unlink()
        if not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return alt


def has_full_refiner(root: Path) -> bool:
    return (Path(root) / "sdxl-refiner" / ".done").exists()


def weight_bytes(root: Path, names=("sdxl-base", "sdxl-refiner", "safety-checker")) -> int:
    total = 0
    for name in names:
        for f in (Path(root) / name).resolve().rglob("*.safetensors"):
            total += f.stat().st_size
    return total


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--no-refiner", action="store_true")
    a = ap.parse_args()
    print(make(a.dir, refiner=not a.no_refiner))
