"""Trained-weights tars in the reference trainer's format, built without the project's loader."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def reference_lora_tar(path: Path, unet, *, rank: int = 4, seed: int = 0, te_dims=(32, 64), n_tokens: int = 2) -> Path:
    """A trained-weights tar in the reference trainer's format, built without the project's loader.

    Keys: ``{attn processor name}.to_{q,k,v,out}_lora.{down,up}.weight``; shapes from the UNet's
    attention layers; values seeded random (large enough to change a tiny model's image).
    """
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for proc_name in unet.attn_processors:  # e.g. down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor
        attn = unet.get_submodule(proc_name.rsplit(".processor", 1)[0])
        for short, layer in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
            tensors[f"{proc_name}.to_{short}_lora.down.weight"] = torch.randn(rank, layer.in_features, generator=g) * 0.3
            tensors[f"{proc_name}.to_{short}_lora.up.weight"] = torch.randn(layer.out_features, rank, generator=g) * 0.3
    embeddings = {f"text_encoders_{i}": torch.randn(n_tokens, d, generator=g) for i, d in enumerate(te_dims)}
    return _tar(path, {"lora.safetensors": tensors, "embeddings.pti": embeddings},
                {"TOK": "".join(f"<s{i}>" for i in range(n_tokens))})


def reference_unet_tar(path: Path, unet, *, seed: int = 0) -> Path:
    """A full-fine-tune tar: ``unet.safetensors`` holding a changed subset of the UNet state dict."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v + torch.randn(v.shape, generator=g) * 0.2
             for k, v in unet.state_dict().items() if "attn2.to_k" in k or "attn2.to_v" in k}
    embeddings = {"text_encoders_0": torch.randn(2, 32, generator=g), "text_encoders_1": torch.randn(2, 64, generator=g)}
    return _tar(path, {"unet.safetensors": state, "embeddings.pti": embeddings}, {"TOK": "<s0><s1>"})


def _tar(path: Path, safetensor_files: dict[str, dict], special: dict) -> Path:
    work = path.parent / (path.name + ".d")
    work.mkdir(parents=True, exist_ok=True)
    for name, tensors in safetensor_files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, work / name)
    (work / "special_params.json").write_text(json.dumps(special))
    with tarfile.open(path, "w") as tar:
        for f in sorted(work.iterdir()):
            tar.add(f, arcname=f.name)
    return path
