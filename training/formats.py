"""The trained weights in the formats other tools read, written beside the reference files.

- ``<name>.safetensors``: the ONE universal LoRA file, kohya format in fp16
  (``lora_unet_…lora_down/lora_up.weight`` + ``.alpha``): ComfyUI, Automatic1111/Forge, InvokeAI and
  diffusers (``pipe.load_lora_weights(path)`` converts kohya keys) all load it; alpha = peft's
  lora_alpha, so alpha/rank is the trained scale. fp16 as every published SDXL LoRA: half the bytes,
  and what the predictors compute in anyway;
- ``<name>_emb.safetensors``: the new token rows as an SDXL embedding (``clip_l`` [N, 768], ``clip_g`` [N, 1280]);
- ``README.txt``: which file is for which tool, and the prompt tokens.

Made with diffusers' converters from the same tensors as the reference files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

KOHYA_DTYPE = torch.float16
README_FILE = "README.txt"


def file_stem(token_string: str) -> str:
    """The name the kohya and embedding files carry: the trigger word, lowercased, file-name safe."""
    stem = re.sub(r"[^a-z0-9_-]+", "_", token_string.lower()).strip("_")
    return stem or "embeddings"


def kohya_file(token_string: str) -> str:
    return f"{file_stem(token_string)}.safetensors"


def embeddings_file(token_string: str) -> str:
    return f"{file_stem(token_string)}_emb.safetensors"


def unet_lora_peft(unet) -> tuple[dict[str, torch.Tensor], dict]:
    """The UNet's LoRA as peft keys (``…to_q.lora_A.weight``, fp32) and its LoraConfig as a dict."""
    from peft.utils import get_peft_model_state_dict

    state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    config = unet.peft_config["default"].to_dict()
    return state, config


def kohya_lora(peft_state: dict[str, torch.Tensor], lora_alpha: float) -> dict[str, torch.Tensor]:
    """peft keys -> kohya keys (``lora_unet_down_blocks_1_…_attn1_to_q.lora_down.weight``) with ``.alpha``.

    diffusers' converter sets alpha = rank (scale 1); it is set to the trained lora_alpha, since
    kohya loaders scale by alpha / rank just as peft scales by lora_alpha / r."""
    from diffusers.utils import convert_state_dict_to_kohya

    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
    return {k: torch.tensor(float(lora_alpha), dtype=KOHYA_DTYPE) if k.endswith(".alpha")
            else v.to(KOHYA_DTYPE).contiguous() for k, v in kohya.items()}


def sdxl_embeddings(new_rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference ``text_encoders_0/1`` -> the SDXL embedding keys ``clip_l`` (CLIP ViT-L) / ``clip_g`` (OpenCLIP bigG)."""
    return {"clip_l": new_rows["text_encoders_0"].contiguous(), "clip_g": new_rows["text_encoders_1"].contiguous()}


def save_interop(out_dir: Path, state) -> list[str]:
    """Write the extra formats of ``state`` (a loop.TrainState) into ``out_dir``; returns the file names."""
    out_dir = Path(out_dir)
    cfg = state.cfg
    written = []
    tokens = state.tokens
    emb_name = embeddings_file(cfg.token_string)
    save_file(sdxl_embeddings(tokens.new_rows()), out_dir / emb_name,
              metadata={"format": "pt", "tokens": json.dumps(tokens.names), "trigger": cfg.token_string})
    written.append(emb_name)
    kohya_name = None
    if cfg.is_lora:
        peft_state, config = unet_lora_peft(state.unet)
        kohya_name = kohya_file(cfg.token_string)
        alpha = float(config["lora_alpha"])
        rank = int(config["r"])
        save_file(kohya_lora(peft_state, alpha), out_dir / kohya_name, metadata={
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(rank),
            "ss_network_alpha": str(alpha),
            "ss_base_model_version": "sdxl_base_v1-0",
            "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
            "ss_output_name": Path(kohya_name).stem,
        })
        written.append(kohya_name)
    (out_dir / README_FILE).write_text(readme(cfg.token_string, tokens.names, kohya_name, emb_name, cfg.is_lora))
    written.append(README_FILE)
    return written


def readme(token_string: str, names: list[str], kohya_name: str | None, emb_name: str, is_lora: bool) -> str:
    tokens = "".join(names)
    emb_stem = Path(emb_name).stem
    lines = [
        "Trained SDXL weights",
        "====================",
        "",
        f"Trigger word: {token_string}  (the trained tokens {tokens}, {len(names)} new embedding vectors per text encoder)",
        "",
        "Files",
        "-----",
        "lora.safetensors, embeddings.pti, special_params.json" if is_lora else
        "unet.safetensors, embeddings.pti, special_params.json",
        "    Replicate stability-ai/sdxl format: give this whole .tar as replicate_weights;",
        f"    write {token_string} in the prompt, e.g. \"a photo of {token_string}\".",
    ]
    if is_lora:
        lines += [
            f"{kohya_name}",
            "    the LoRA for every other tool (kohya format, fp16; alpha = rank: strength 1 is the trained",
            "    strength, this predictor's lora_scale):",
            "    ComfyUI (models/loras, LoraLoader); Automatic1111 / Forge (models/Lora, then",
            f"    <lora:{Path(kohya_name).stem}:0.6> in the prompt); InvokeAI; SD.Next;",
            f"    diffusers: pipe.load_lora_weights(\"{kohya_name}\"), then cross_attention_kwargs={{\"scale\": 0.6}}.",
        ]
    lines += [
        f"{emb_name}",
        "    the new tokens as an SDXL embedding (clip_l for CLIP ViT-L, clip_g for OpenCLIP bigG).",
        f"    ComfyUI (models/embeddings): write embedding:{emb_stem} where the trigger word goes.",
        f"    Automatic1111 / Forge (embeddings/): write {emb_stem} where the trigger word goes.",
        "    diffusers:",
        "        from safetensors.torch import load_file",
        f"        state = load_file(\"{emb_name}\")",
        f"        pipe.load_textual_inversion(state[\"clip_l\"], token={names!r}, "
        "text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)",
        f"        pipe.load_textual_inversion(state[\"clip_g\"], token={names!r}, "
        "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)",
        f"    and write {tokens} where the trigger word goes, e.g. \"a photo of {tokens}\".",
        "",
        "Use the LoRA and the embedding together: the LoRA was trained with these tokens in the captions.",
        "Intermediate checkpoints and the prepared dataset are separate outputs of the training.",
        "",
    ]
    return "\n".join(lines)
