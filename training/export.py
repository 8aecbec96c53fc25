"""The outputs: weights in the reference (replicate/cog-sdxl) format, checkpoints, the dataset, as tars.

The weights tar is lean: the reference files (exactly as the reference writes them: what both
predictors load), ONE universal LoRA file in fp16 and the SDXL embedding (``formats``), a README.
Checkpoints (reference files only) and the prepared dataset go to tars of their own, separate
outputs of the training, so a ``replicate_weights`` load downloads only the weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

LORA_FILE = "lora.safetensors"
UNET_FILE = "unet.safetensors"
EMBEDDINGS_FILE = "embeddings.pti"
SPECIAL_PARAMS_FILE = "special_params.json"

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<proj>to_q|to_k|to_v|to_out\.0)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def legacy_lora_key(peft_key: str) -> str:
    """``...attn1.to_q.lora_A.weight`` -> ``...attn1.processor.to_q_lora.down.weight`` (to_out.0 -> to_out)."""
    m = _PEFT_KEY.match(peft_key)
    if m is None:
        raise ValueError(f"not a LoRA weight of an attention projection: {peft_key}")
    proj = "to_out" if m["proj"] == "to_out.0" else m["proj"]
    return f"{m['module']}.processor.{proj}_lora.{'down' if m['ab'] == 'A' else 'up'}.weight"


def legacy_lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's LoRA in the attention-processor key format the reference trainer wrote and its
    predictor reads. No alpha is stored: training uses lora_alpha == rank, so the scale is 1."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    return {legacy_lora_key(k): v.detach().float().cpu().contiguous() for k, v in state.items()}


CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_TAR = "trained_model.tar"
CHECKPOINTS_TAR = "checkpoints.tar"
DATASET_TAR = "dataset.tar"


def save_weights(out_dir: Path, state, *, interop: bool | None = None) -> Path:
    """Write the trained weights of ``state`` (a loop.TrainState) into ``out_dir``.

    ``interop``: also write the universal LoRA, the embedding file and the README; by default yes, except
    for checkpoints (``loop.fit`` saves them into ``checkpoints/checkpoint-N``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if state.cfg.is_lora:
        save_file(legacy_lora_state_dict(state.unet), out_dir / LORA_FILE)
    else:
        # The predictors run the UNet in fp16: that is what is stored (half the size of fp32).
        unet_state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in state.unet.state_dict().items()}
        save_file(unet_state, out_dir / UNET_FILE)
    save_file(state.tokens.new_rows(), out_dir / EMBEDDINGS_FILE)
    (out_dir / SPECIAL_PARAMS_FILE).write_text(json.dumps(state.tokens.special_params()))
    if interop is None:
        interop = out_dir.parent.name != CHECKPOINTS_DIR
    if interop:
        from .formats import save_interop

        save_interop(out_dir, state)
    return out_dir


def copy_dataset(dataset_dir: Path, out_dir: Path) -> None:
    """Images, masks and captions.csv of the prepared dataset, so a user can see what was trained on."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("images", "masks"):
        if (dataset_dir / name).is_dir():
            shutil.copytree(dataset_dir / name, out_dir / name, dirs_exist_ok=True)
    shutil.copy2(dataset_dir / "captions.csv", out_dir / "captions.csv")


def write_tar(src_dir: Path, tar_path: Path, prefix: str = "") -> Path:
    """Tar the content of ``src_dir`` (relative member names, sorted, under ``prefix/`` when given) into
    ``tar_path`` atomically: the tar appears complete or not at all."""
    src_dir, tar_path = Path(src_dir), Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{tar_path.name}.", suffix=".partial", dir=tar_path.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w") as tar:
            for path in sorted(src_dir.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    name = path.relative_to(src_dir).as_posix()
                    tar.add(path, arcname=f"{prefix}/{name}" if prefix else name, recursive=False)
        os.replace(tmp, tar_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tar_path
