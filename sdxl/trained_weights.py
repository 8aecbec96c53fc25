"""Trained weights read from disk and checked against the base model, before anything is applied.

A trained tar in the reference (Replicate stability-ai/sdxl trainer) format holds:
- ``lora.safetensors``: legacy attention-processor LoRA keys
  ``{processor name}.to_{q,k,v,out}_lora.{down,up}.weight`` (no alpha: delta = up(down(x)) * lora_scale),
  or ``unet.safetensors``: a subset of the UNet state dict (a full fine-tune);
- ``embeddings.pti``: ``text_encoders_0`` [N, d1] and ``text_encoders_1`` [N, d2], rows of ``<s0>``..``<sN-1>``;
- ``special_params.json``: e.g. ``{"TOK": "<s0><s1>"}``, substituted in prompts (whole words).

Besides that tar, any SDXL LoRA is taken (see ``lora_formats``): a directory or tar holding a
diffusers/peft or kohya ``.safetensors`` (e.g. ``pytorch_lora_weights.safetensors``, with
``<name>_emb.safetensors`` embeddings), a single such file (CivitAI, a kohya training), or a Hugging
Face repo id. The kind is told from the content; diffusers' own ``lora_state_dict`` converts it
(kohya alphas become peft scales exactly as in ``load_lora_weights``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from safetensors import SafetensorError
from safetensors.torch import load_file

from weights.errors import WeightsError

from .lora_formats import Header, Kind, classify, describe_non_safetensors, read_header
from .models import Models
from .trigger import new_token_names

log = logging.getLogger(__name__)



@dataclass
class TrainedWeights:
    source: str
    lora: dict[str, torch.Tensor] | None = None  # peft keys, no "unet." prefix
    # any other LoRA (diffusers/peft/kohya) as read, for diffusers' own lora_state_dict to convert
    foreign_lora: dict[str, torch.Tensor] | None = None
    lora_metadata: dict | None = None  # diffusers' lora_adapter_metadata (LoraConfig of each part)
    lora_kind: str = ""  # what was found, for the log
    unet: dict[str, torch.Tensor] | None = None
    embeddings: list[torch.Tensor] = field(default_factory=list)  # one [N, d] per text encoder
    token_map: dict[str, str] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return new_token_names(self.embeddings[0].shape[0]) if self.embeddings else []

    @property
    def has_lora(self) -> bool:
        return self.lora is not None or self.foreign_lora is not None


def _read_safetensors(path: Path, input_name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, ValueError) as e:
        raise WeightsError(input_name, f"{path.name} is not a valid safetensors file ({e})") from e
    except OSError:  # not the OS's words: they name server paths
        raise WeightsError(input_name, f"{path.name} is not a valid safetensors file (it could not be read)") from None


@dataclass(frozen=True)
class BaseShapes:
    """What fits the base model: taken once before any fine-tune is applied (peft renames layers)."""

    unet: dict[str, torch.Size]  # state-dict key -> shape
    linear: dict[str, tuple[int, int]]  # linear layer name -> (in_features, out_features)
    embedding_dims: tuple[int, int]  # of text_encoder, text_encoder_2
    conv: dict[str, tuple[int, int]] = field(default_factory=dict)  # UNet conv layer -> (in, out) channels
    text_linear: tuple[dict[str, tuple[int, int]], ...] = ()  # per text encoder, as ``linear``
    unet_config: dict = field(default_factory=dict)

    @classmethod
    def of(cls, models: Models) -> "BaseShapes":
        unet = models.base.unet
        encoders = (models.base.text_encoder, models.base.text_encoder_2)
        return cls(
            unet={base_name(k): v.shape for k, v in unet.state_dict().items() if ".lora_" not in k},
            linear=_linears(unet),
            embedding_dims=tuple(e.get_input_embeddings().embedding_dim for e in encoders),
            conv={base_name(n): (m.in_channels, m.out_channels) for n, m in unet.named_modules()
                  if isinstance(m, torch.nn.Conv2d) and ".lora_" not in n},
            text_linear=tuple(_linears(e) for e in encoders),
            unet_config=dict(unet.config),
        )

    @property
    def cross_attention(self) -> int | None:
        """The text width the UNet's cross-attention reads (2048 for SDXL)."""
        return next((f[0] for n, f in self.linear.items() if n.endswith("attn2.to_k")), None)


def base_name(name: str) -> str:
    """The layer's name in the plain model (the compiled fast path loads an adapter at setup: peft
    moves each adapted layer to ``<name>.base_layer``)."""
    return name.replace(".base_layer", "")


def _linears(module: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {base_name(n): (m.in_features, m.out_features) for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and ".lora_" not in n}


ACCEPTED = ("expected a tar of trained weights, a .safetensors SDXL LoRA (diffusers/peft or kohya format) "
            "or a Hugging Face repo id")


def read_weights(path: Path, shapes: BaseShapes, *, input_name: str, source: str) -> TrainedWeights:
    """Any accepted weights: a directory (an extracted tar, a Hugging Face snapshot) or one file."""
    path = Path(path)
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if names & {"lora.safetensors", "unet.safetensors"}:
            return read_trained_weights(path, shapes, input_name=input_name, source=source)
        return read_lora_directory(path, shapes, input_name=input_name, source=source)
    return read_lora_file(path, shapes, input_name=input_name, source=source)


def read_lora_file(path: Path, shapes: BaseShapes, *, input_name: str, source: str) -> TrainedWeights:
    """A single file: a LoRA ``.safetensors`` of any known kind; anything else is refused, saying what it is."""
    header = read_header(path)
    if header is None:
        raise WeightsError(input_name, f"found {describe_non_safetensors(path)}; {ACCEPTED}")
    kind = classify(header)
    if not kind.is_lora:
        if kind.name in ("sdxl-embedding", "reference-embedding"):
            raise WeightsError(input_name, f"found {kind.description} but no LoRA; pass the trained tar (or a folder / "
                               "Hugging Face repo) holding the LoRA, the embeddings and special_params.json")
        raise WeightsError(input_name, f"found {kind.description}; {ACCEPTED}")
    trained = TrainedWeights(source=source)
    _read_lora_into(trained, path, header, kind, shapes, input_name)
    return trained


def read_lora_directory(directory: Path, shapes: BaseShapes, *, input_name: str, source: str) -> TrainedWeights:
    """A folder without the reference files: one LoRA ``.safetensors`` (diffusers preferred over kohya, as
    both are in our tars), optional ``<name>_emb.safetensors`` embeddings and ``special_params.json``."""
    found: list[tuple[Path, Header, Kind]] = []
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != "special_params.json":
            header = read_header(p)
            if header is not None:
                found.append((p, header, classify(header)))
    loras = [f for f in found if f[2].is_lora]
    embeddings = [f for f in found if f[2].name in ("sdxl-embedding", "reference-embedding")]
    if not loras and not embeddings:
        seen = "; ".join(k.description for _, _, k in found[:2])  # kinds, never a listing of the folder
        count = sum(1 for _ in directory.iterdir())
        raise WeightsError(input_name, f"found {count} files and no LoRA or embedding" + (f" ({seen})" if seen else "")
                           + "; expected lora.safetensors or unet.safetensors (with embeddings.pti and "
                           "special_params.json), or a LoRA .safetensors (diffusers/peft or kohya format)")
    trained = TrainedWeights(source=source)
    if loras:
        order = {"diffusers": 0, "peft": 1, "kohya": 2, "reference": 3}
        p, header, kind = min(loras, key=lambda f: (order[f[2].name], f[0].name))
        _read_lora_into(trained, p, header, kind, shapes, input_name)
    if embeddings:
        if len(embeddings) > 1:
            raise WeightsError(input_name, f"found {len(embeddings)} embedding files; expected one")
        p, _, kind = embeddings[0]
        tensors = _read_safetensors(p, input_name)
        keys = ("clip_l", "clip_g") if kind.name == "sdxl-embedding" else ("text_encoders_0", "text_encoders_1")
        trained.embeddings = _check_embeddings([tensors[k] for k in keys], keys, shapes, input_name, p.name)
        trained.token_map = {p.stem: "".join(trained.tokens)}  # A1111 / ComfyUI name an embedding after its file
    if (directory / "special_params.json").is_file():
        trained.token_map = {**trained.token_map, **_read_token_map(directory / "special_params.json", input_name)}
    return trained


def _read_lora_into(trained: TrainedWeights, path: Path, header: Header, kind: Kind, shapes: BaseShapes, input_name: str) -> None:
    label = f"{path.name} ({kind.description})" if path.name != "weights.bin" else kind.description
    if kind.cross_attention is not None and shapes.cross_attention is not None \
            and kind.cross_attention != shapes.cross_attention:
        raise WeightsError(input_name, f"found {kind.description}; it does not fit this SDXL model, whose cross-attention "
                           f"reads {shapes.cross_attention} features")
    state = _read_safetensors(path, input_name)
    trained.lora_kind = kind.description
    if kind.name == "reference":
        trained.lora = convert_unet_state_dict_to_peft(state)
        _check_lora_fits(trained.lora, shapes, input_name, label=label)
        return
    if kind.name == "peft":
        state = {f"unet.{k}": v for k, v in state.items()}
    try:  # diffusers' own conversion, exactly what load_lora_weights will do
        converted, _alphas = _lora_state_dict(state, shapes)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise WeightsError(input_name, f"found {kind.description}, which diffusers cannot convert ({e})") from e
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "text_encoder": {}, "text_encoder_2": {}}
    for key, value in converted.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise WeightsError(input_name, f"found {kind.description}; {key!r} is not for the SDXL UNet or text encoders")
        parts[prefix][rest] = value
    if not parts["unet"] and not parts["text_encoder"] and not parts["text_encoder_2"]:
        raise WeightsError(input_name, f"found {kind.description}, but it holds no LoRA weights")
    if parts["unet"]:
        _check_lora_fits(convert_unet_state_dict_to_peft(parts["unet"]), shapes, input_name, label=label)
    for i, name in enumerate(("text_encoder", "text_encoder_2")):
        if parts[name]:
            te = convert_state_dict_to_peft(convert_state_dict_to_diffusers(parts[name]))
            _check_lora_fits(te, shapes, input_name, label=label, linear=shapes.text_linear[i], conv={}, model=name)
    trained.foreign_lora = state
    raw = header.metadata.get(_LORA_METADATA_KEY)
    if raw:
        try:
            trained.lora_metadata = json.loads(raw)
        except json.JSONDecodeError as e:
            raise WeightsError(input_name, f"found {kind.description} with unreadable {_LORA_METADATA_KEY} ({e})") from e


_LORA_METADATA_KEY = "lora_adapter_metadata"


def _lora_state_dict(state: dict[str, torch.Tensor], shapes: BaseShapes):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.lora_state_dict(dict(state), unet_config=shapes.unet_config or None)


def _check_embeddings(rows_per_encoder, keys, shapes: BaseShapes, input_name: str, file: str) -> list[torch.Tensor]:
    out = []
    for rows, key, dim in zip(rows_per_encoder, keys, shapes.embedding_dims):
        if rows is None or rows.ndim != 2 or rows.shape[1] != dim:
            got = None if rows is None else list(rows.shape)
            raise WeightsError(input_name, f"{file} {key} must be [N, {dim}], got {got}")
        out.append(rows)
    if out[0].shape[0] != out[1].shape[0]:
        raise WeightsError(input_name, f"{file} has different token counts for the two encoders")
    return out


def _read_token_map(path: Path, input_name: str) -> dict[str, str]:
    try:
        token_map = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(input_name, f"special_params.json is not valid JSON ({e})") from e
    except UnicodeDecodeError:  # its message quotes the bytes
        raise WeightsError(input_name, "special_params.json is not valid JSON (not UTF-8 text)") from None
    if not isinstance(token_map, dict) or not all(isinstance(v, str) for v in token_map.values()):
        raise WeightsError(input_name, f"special_params.json must map strings to strings, e.g. {{\"TOK\": \"<s0><s1>\"}}")
    return token_map


def read_trained_weights(directory: Path, shapes: BaseShapes, *, input_name: str, source: str) -> TrainedWeights:
    """Read and validate a reference-format weights directory against the base model's ``shapes``."""
    if not directory.is_dir():
        raise WeightsError(input_name, f"expected a tar of trained weights, got a single file")
    names = {p.name for p in directory.iterdir()}
    trained = TrainedWeights(source=source)
    if "lora.safetensors" in names:
        legacy = _read_safetensors(directory / "lora.safetensors", input_name)
        trained.lora = convert_unet_state_dict_to_peft(legacy)
        _check_lora_fits(trained.lora, shapes, input_name)
    elif "unet.safetensors" in names:
        trained.unet = _read_safetensors(directory / "unet.safetensors", input_name)
        bad = [k for k, v in trained.unet.items() if shapes.unet.get(k) != v.shape]
        if bad:
            raise WeightsError(input_name, f"unet.safetensors does not fit the SDXL UNet (e.g. {bad[0]!r})")
    else:
        raise WeightsError(input_name, f"found {len(names)} files and neither lora.safetensors nor unet.safetensors; "
                           "expected them (with embeddings.pti and special_params.json)")
    if "embeddings.pti" in names:
        emb = _read_safetensors(directory / "embeddings.pti", input_name)
        keys = ("text_encoders_0", "text_encoders_1")
        trained.embeddings = _check_embeddings([emb.get(k) for k in keys], keys, shapes, input_name, "embeddings.pti")
    if "special_params.json" in names:
        trained.token_map = _read_token_map(directory / "special_params.json", input_name)
    return trained


def _check_lora_fits(lora: dict[str, torch.Tensor], shapes: BaseShapes, input_name: str, *, label: str = "lora.safetensors",
                     linear: dict | None = None, conv: dict | None = None, model: str = "UNet") -> None:
    """Every peft key ``<layer>.lora_{A,B}.weight`` names a layer of the base model and fits its width
    (linear: [r, in] / [out, r]; conv: [r, in, kh, kw] / [out, r, 1, 1])."""
    linear = shapes.linear if linear is None else linear
    conv = shapes.conv if conv is None else conv
    if not lora:
        raise WeightsError(input_name, f"{label} holds no tensors")
    for key, tensor in lora.items():
        module_name, _, kind = key.rpartition(".lora_")
        features = linear.get(module_name)
        ndim = 2
        if features is None and module_name in conv:
            features, ndim = conv[module_name], 4
        if features is None or tensor.ndim != ndim or kind not in ("A.weight", "B.weight"):
            raise WeightsError(input_name, f"{label} is not an SDXL {model} LoRA (unknown layer {key!r})")
        expected = features[0] if kind.startswith("A") else features[1]
        actual = tensor.shape[1] if kind.startswith("A") else tensor.shape[0]
        if expected != actual:
            raise WeightsError(input_name, f"{label} does not fit this SDXL {model} ({key!r} has {actual} features, the layer {expected})"
            )
