"""What a weights file is, told from its content (never its name): safetensors header keys and shapes.

Kinds of LoRA state dicts this recognises:
- ``reference``: the reference trainer's attention-processor keys ``...processor.to_q_lora.down.weight``;
- ``diffusers``: ``unet.…lora.down.weight`` / ``unet.…lora_A.weight`` (+ ``text_encoder[_2].…``), as
  ``save_lora_weights`` writes them (``pytorch_lora_weights.safetensors``);
- ``peft``: ``get_peft_model_state_dict(unet)`` keys without a prefix (``…to_q.lora_A.weight``);
- ``kohya``: ``lora_unet_…``/``lora_te1_…``/``lora_te2_…`` with ``.lora_down.weight``, ``.lora_up.weight``,
  ``.alpha`` (kohya sd-scripts, CivitAI, ComfyUI, A1111);
and the embedding files ``clip_l``/``clip_g`` (SDXL) and ``text_encoders_0``/``text_encoders_1`` (reference).

Everything else is described, so a refusal can say what was found (by kind and size, never by quoting bytes).
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER_BYTES = 100 * 1024**2

# the text model's width per model family, read off a LoRA's cross-attention (attn2.to_k) input
FAMILY_BY_CROSS_ATTENTION = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "the SDXL refiner", 4096: "a T5-conditioned model"}

_REFERENCE_KEY = re.compile(r"\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
_PEFT_KEY = re.compile(r"\.lora_[AB](\.[\w-]+)?\.weight$|\.lora_magnitude_vector")
_DIFFUSERS_KEY = re.compile(r"\.lora\.(down|up)\.weight$|\.lora_linear_layer\.(down|up)\.weight$")


@dataclass(frozen=True)
class Header:
    """A safetensors file's tensors: key -> (dtype, shape), read without loading any data."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key][1]


def read_header(path: Path) -> Header | None:
    """The safetensors header of ``path``, or None when the file is not safetensors."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER_BYTES or n + 8 > size:
            return None
        raw = f.read(n)
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for key, info in header.items():
        if not isinstance(info, dict) or "shape" not in info or "dtype" not in info:
            return None
        tensors[key] = (info["dtype"], tuple(info["shape"]))
    return Header(tensors, meta if isinstance(meta, dict) else {})


def describe_non_safetensors(path: Path) -> str:
    """What a file that is not safetensors looks like, e.g. ``a pickle (PyTorch .bin/.pt/.ckpt)``."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(512)
    size = path.stat().st_size
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "a pickle (a PyTorch .bin/.pt/.ckpt), not safetensors; pickles can run code, so only .safetensors are loaded"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    return ("a pickle (a PyTorch .bin/.pt/.ckpt zip), not safetensors; pickles can run code, "
                            "so only .safetensors are loaded")
        except zipfile.BadZipFile:
            pass
        return "a zip archive, not a tar or safetensors"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file (a .tar.gz?); use an uncompressed .tar or a .safetensors file"
    if head.lstrip()[:1] in (b"<", b"{", b"["):  # never its bytes: they may come from a file that is not the user's
        return f"a text file of {size} bytes (e.g. a web page instead of the weights)"
    return f"{size} bytes of unknown data"


@dataclass(frozen=True)
class Kind:
    """What a safetensors file holds. ``lora`` tells whether it is an SDXL-shaped LoRA we can give diffusers."""

    name: str  # reference | diffusers | peft | kohya | sdxl-embedding | reference-embedding | other
    description: str
    cross_attention: int | None = None  # input width of the LoRA's attn2.to_k, when it has one

    @property
    def is_lora(self) -> bool:
        return self.name in ("reference", "diffusers", "peft", "kohya")


def _examples(keys: list[str], n: int = 1) -> str:
    shown = []
    for k in sorted(keys)[:n]:
        shown.append(k if len(k) <= 40 else k[:40] + "...")
    return ", ".join(shown)


def _cross_attention(header: Header) -> int | None:
    """The in-features of a LoRA's first cross-attention key projection (text width of the model it is for)."""
    for key in sorted(header.tensors):
        flat = key.replace(".", "_")
        if key.startswith(("lora_te", "text_encoder")):
            continue
        if "attn2_to_k" in flat and any(t in flat for t in ("lora_down", "lora_A")):
            shape = header.shape(key)
            if len(shape) >= 2:
                return int(shape[1])
    return None


def classify(header: Header) -> Kind:
    keys = list(header.tensors)
    if not keys:
        return Kind("other", "an empty safetensors file (no tensors)")
    key_set = set(keys)
    n = len(keys)
    if key_set == {"clip_l", "clip_g"}:
        rows = header.shape("clip_g")[0] if header.shape("clip_g") else 0
        return Kind("sdxl-embedding", f"an SDXL textual-inversion embedding (clip_l, clip_g; {rows} vectors)")
    if key_set == {"text_encoders_0", "text_encoders_1"}:
        return Kind("reference-embedding", "reference-format embeddings (text_encoders_0, text_encoders_1)")
    if key_set & {"emb_params", "string_to_param"} or (
            n == 1 and len(header.shape(keys[0])) == 2 and header.shape(keys[0])[1] in (768, 1024)):
        return Kind("other", f"a textual-inversion embedding for SD1.x/SD2.x (key {keys[0]!r}), not an SDXL LoRA")
    if any(k.startswith(("model.diffusion_model.", "conditioner.embedders", "first_stage_model.")) for k in keys):
        return Kind("other", f"a full model checkpoint ({n} tensors, e.g. {_examples(keys)}), not a LoRA")
    if any(k.startswith(("transformer.", "lora_transformer_", "diffusion_model.", "lora_unet_double_blocks",
                         "lora_unet_single_blocks")) or "double_blocks" in k for k in keys):
        return Kind("other", f"a LoRA for a transformer model such as Flux or SD3 (keys {_examples(keys)}), not SDXL")
    cross = _cross_attention(header)
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        lycoris = [k for k in keys if any(t in k for t in ("hada_w", "lokr_w", ".oft_", "lora_mid"))]
        if lycoris:
            return Kind("other", f"a LyCORIS (LoHa/LoKr/LoCon) network (keys {_examples(lycoris)}), which this "
                                 "model cannot load; use a plain LoRA", cross)
        unet_keys = [k for k in keys if k.startswith("lora_unet_")]
        family = None
        if any(k.startswith("lora_te_") for k in keys):
            family = "SD1.x/SD2.x"  # one text encoder
        if cross is not None and cross in FAMILY_BY_CROSS_ATTENTION and FAMILY_BY_CROSS_ATTENTION[cross] != "SDXL":
            family = FAMILY_BY_CROSS_ATTENTION[cross]
        detail = ", ".join(x for x in (f"keys {_examples(unet_keys or keys)}",
                                      f"cross-attention {cross}" if cross else "") if x)
        desc = f"a kohya LoRA for {family} ({detail})" if family else f"a kohya LoRA ({detail})"
        return Kind("kohya", desc, cross)
    if all(_REFERENCE_KEY.search(k) for k in keys):
        return Kind("reference", f"a reference-format LoRA (attention-processor keys, e.g. {_examples(keys)})", cross)
    prefixed = [k for k in keys if k.startswith(("unet.", "text_encoder.", "text_encoder_2."))]
    if prefixed and any(_DIFFUSERS_KEY.search(k) or _PEFT_KEY.search(k) for k in prefixed):
        return Kind("diffusers", f"a diffusers LoRA (keys {_examples(prefixed)}"
                                 + (f", cross-attention {cross})" if cross else ")"), cross)
    if all(_PEFT_KEY.search(k) for k in keys) and any(k.startswith(("down_blocks.", "up_blocks.", "mid_block."))
                                                      for k in keys):
        return Kind("peft", f"a peft UNet LoRA (keys {_examples(keys)}" + (f", cross-attention {cross})" if cross else ")"),
                    cross)
    return Kind("other", f"a safetensors file with {n} tensors that is not a LoRA or embedding this model knows "
                         f"(keys such as {_examples(keys, 2)})")
