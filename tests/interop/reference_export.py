"""A frozen copy of the reference-format writer as it was before the interop formats (commit 96b4d39,
training/export.py::save_weights): the reference files of a tar must stay byte-identical to it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<proj>to_q|to_k|to_v|to_out\.0)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def legacy_lora_key(peft_key: str) -> str:
    m = _PEFT_KEY.match(peft_key)
    if m is None:
        raise ValueError(f"not a LoRA weight of an attention projection: {peft_key}")
    proj = "to_out" if m["proj"] == "to_out.0" else m["proj"]
    return f"{m['module']}.processor.{proj}_lora.{'down' if m['ab'] == 'A' else 'up'}.weight"


def save_weights(out_dir: Path, state) -> Path:
    from peft.utils import get_peft_model_state_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if state.cfg.is_lora:
        lora = {legacy_lora_key(k): v.detach().float().cpu().contiguous()
                for k, v in get_peft_model_state_dict(state.unet).items()}
        save_file(lora, out_dir / "lora.safetensors")
    else:
        unet_state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in state.unet.state_dict().items()}
        save_file(unet_state, out_dir / "unet.safetensors")
    save_file(state.tokens.new_rows(), out_dir / "embeddings.pti")
    (out_dir / "special_params.json").write_text(json.dumps(state.tokens.special_params()))
    return out_dir
