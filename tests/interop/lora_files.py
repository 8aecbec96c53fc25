"""LoRA files as other tools publish them, built from module names alone (not with the code under test)."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import torch
from safetensors.torch import save_file

PLAIN = dict(prompt="a photo of a dog")  # no trigger word: only a LoRA changes this image


def _linears(module, suffixes):
    return [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(suffixes)]


def kohya_civitai(path: Path, pipe, *, rank: int = 4, alpha: float = 2.0, seed: int = 0, scale: float = 1.0,
                  text_encoders: bool = True, dtype=torch.float16) -> Path:
    """A kohya sd-scripts style SDXL LoRA: ``lora_unet_<module with _>`` on attention and feed-forward
    layers, ``lora_te1_``/``lora_te2_`` on the text encoders' attention, fp16, alpha != rank."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}

    def add(prefix, name, layer, s):
        key = prefix + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = (torch.randn(rank, layer.in_features, generator=g) * s).to(dtype)
        tensors[f"{key}.lora_up.weight"] = (torch.randn(layer.out_features, rank, generator=g) * s * scale).to(dtype)
        tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=dtype)

    for name, layer in _linears(pipe.unet, ("to_q", "to_k", "to_v", "to_out.0", "ff.net.2")):
        add("lora_unet_", name, layer, 0.3)
    if text_encoders:
        for prefix, encoder in (("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)):
            for name, layer in _linears(encoder, ("q_proj", "k_proj", "v_proj", "out_proj")):
                add(prefix, name, layer, 0.3)
    save_file(tensors, path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                       "ss_network_alpha": str(alpha)})
    return path


def kohya_sd15(path: Path) -> Path:
    """The first keys of a kohya LoRA for SD1.5: one text encoder (lora_te_), cross-attention 768."""
    tensors = {}
    for key, fan_in, fan_out in (
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320),
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
    ):
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, fan_in, dtype=torch.float16)
        tensors[f"{key}.lora_up.weight"] = torch.randn(fan_out, 4, dtype=torch.float16)
        tensors[f"{key}.alpha"] = torch.tensor(4.0, dtype=torch.float16)
    save_file(tensors, path)
    return path


def diffusers_full_size_sdxl(path: Path) -> Path:
    """Two keys of a diffusers LoRA for the real SDXL (cross-attention 2048): does not fit tiny weights."""
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file({f"{key}.lora.down.weight": torch.zeros(4, 2048), f"{key}.lora.up.weight": torch.zeros(640, 4)}, path)
    return path


def flux_lora(path: Path) -> Path:
    key = "transformer.single_transformer_blocks.0.attn.to_k"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 3072), f"{key}.lora_B.weight": torch.zeros(3072, 4)}, path)
    return path


def random_safetensors(path: Path) -> Path:
    save_file({"weight": torch.randn(8, 8), "bias": torch.randn(8), "running_mean": torch.randn(8)}, path)
    return path


def pickle_file(path: Path) -> Path:
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, path)
    return path


def tar_of(path: Path, files: dict[str, Path], special: dict | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, src in files.items():
            tar.add(src, arcname=name)
        if special is not None:
            js = path.parent / (path.name + ".special.json")
            js.write_text(json.dumps(special))
            tar.add(js, arcname="special_params.json")
    return path


def hf_cache(hub: Path, repo: str, files: dict[str, Path], revision: str = "0" * 40) -> Path:
    """A Hugging Face cache entry as huggingface_hub lays it out (refs/main -> snapshots/<rev>/...)."""
    root = hub / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, snap / name)
    return hub
