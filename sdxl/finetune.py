"""Fine-tuned weights in the reference (Replicate stability-ai/sdxl trainer) format, loaded and unloaded.

A trained tar holds:
- ``lora.safetensors``: legacy attention-processor LoRA keys
  ``{processor name}.to_{q,k,v,out}_lora.{down,up}.weight`` (no alpha: delta = up(down(x)) * lora_scale),
  or ``unet.safetensors``: a subset of the UNet state dict (a full fine-tune);
- ``embeddings.pti``: ``text_encoders_0`` [N, d1] and ``text_encoders_1`` [N, d2], rows of ``<s0>``..``<sN-1>``;
- ``special_params.json``: e.g. ``{"TOK": "<s0><s1>"}``, substituted in prompts (whole words).

Everything is read and checked before the pipeline is touched; a failure (or cancellation) while
applying rolls back to the base model. Unloading restores the base weights bitwise.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
from safetensors import SafetensorError
from safetensors.torch import load_file

from .models import Models

log = logging.getLogger(__name__)

ADAPTER = "replicate_weights"


class WeightsError(ValueError):
    pass


@dataclass
class TrainedWeights:
    source: str
    lora: dict[str, torch.Tensor] | None = None  # peft keys, no "unet." prefix
    unet: dict[str, torch.Tensor] | None = None
    embeddings: list[torch.Tensor] = field(default_factory=list)  # one [N, d] per text encoder
    token_map: dict[str, str] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return [f"<s{i}>" for i in range(self.embeddings[0].shape[0])] if self.embeddings else []


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{what}: {path.name} is not a valid safetensors file ({e})") from e


@dataclass(frozen=True)
class BaseShapes:
    """What fits the base model: taken once before any fine-tune is applied (peft renames layers)."""

    unet: dict[str, torch.Size]  # state-dict key -> shape
    linear: dict[str, tuple[int, int]]  # linear layer name -> (in_features, out_features)
    embedding_dims: tuple[int, int]  # of text_encoder, text_encoder_2

    @classmethod
    def of(cls, models: Models) -> "BaseShapes":
        unet = models.base.unet
        return cls(
            unet={k: v.shape for k, v in unet.state_dict().items()},
            linear={n: (m.in_features, m.out_features) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)},
            embedding_dims=tuple(
                e.get_input_embeddings().embedding_dim for e in (models.base.text_encoder, models.base.text_encoder_2)
            ),
        )


def read_trained_weights(directory: Path, shapes: BaseShapes, *, what: str, source: str) -> TrainedWeights:
    """Read and validate a reference-format weights directory against the base model's ``shapes``."""
    if not directory.is_dir():
        raise WeightsError(f"{what}: expected a tar of trained weights, got a single file")
    names = {p.name for p in directory.iterdir()}
    tw = TrainedWeights(source=source)
    if "lora.safetensors" in names:
        legacy = _read_safetensors(directory / "lora.safetensors", what)
        tw.lora = convert_unet_state_dict_to_peft(legacy)
        _check_lora_fits(tw.lora, shapes, what)
    elif "unet.safetensors" in names:
        tw.unet = _read_safetensors(directory / "unet.safetensors", what)
        bad = [k for k, v in tw.unet.items() if shapes.unet.get(k) != v.shape]
        if bad:
            raise WeightsError(f"{what}: unet.safetensors does not fit the SDXL UNet (e.g. {bad[0]!r})")
    else:
        raise WeightsError(
            f"{what}: found {sorted(names)}; expected lora.safetensors or unet.safetensors "
            "(with embeddings.pti and special_params.json)"
        )
    if "embeddings.pti" in names:
        emb = _read_safetensors(directory / "embeddings.pti", what)
        for i, dim in enumerate(shapes.embedding_dims):
            rows = emb.get(f"text_encoders_{i}")
            if rows is None or rows.ndim != 2 or rows.shape[1] != dim:
                got = None if rows is None else list(rows.shape)
                raise WeightsError(f"{what}: embeddings.pti text_encoders_{i} must be [N, {dim}], got {got}")
            tw.embeddings.append(rows)
        if tw.embeddings[0].shape[0] != tw.embeddings[1].shape[0]:
            raise WeightsError(f"{what}: embeddings.pti has different token counts for the two encoders")
    if "special_params.json" in names:
        try:
            token_map = json.loads((directory / "special_params.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightsError(f"{what}: special_params.json is not valid JSON ({e})") from e
        if not isinstance(token_map, dict) or not all(isinstance(v, str) for v in token_map.values()):
            raise WeightsError(f"{what}: special_params.json must map strings to strings, e.g. {{\"TOK\": \"<s0><s1>\"}}")
        tw.token_map = token_map
    return tw


def _check_lora_fits(lora: dict[str, torch.Tensor], shapes: BaseShapes, what: str) -> None:
    if not lora:
        raise WeightsError(f"{what}: lora.safetensors holds no tensors")
    for key, tensor in lora.items():
        module_name, _, kind = key.rpartition(".lora_")
        features = shapes.linear.get(module_name)
        if features is None or tensor.ndim != 2 or kind not in ("A.weight", "B.weight"):
            raise WeightsError(f"{what}: lora.safetensors is not an SDXL UNet LoRA (unknown layer {key!r})")
        expected = features[0] if kind.startswith("A") else features[1]
        actual = tensor.shape[1] if kind.startswith("A") else tensor.shape[0]
        if expected != actual:
            raise WeightsError(
                f"{what}: lora.safetensors does not fit this SDXL UNet ({key!r} has {actual} features, the layer {expected})"
            )


def substitute_tokens(prompt: str, token_map: dict[str, str]) -> str:
    """Replace each trigger word (e.g. TOK) with its tokens, on whole words only ("TOKYO" stays)."""
    for word, tokens in token_map.items():
        prompt = re.sub(rf"(?<![\w]){re.escape(word)}(?![\w])", lambda _: tokens, prompt)
    return prompt


class FineTunes:
    """Which trained weights are applied to the shared pipelines, and switching between them."""

    def __init__(self, models: Models):
        self.models = models
        self.shapes = BaseShapes.of(models)
        self.active: TrainedWeights | None = None
        self._unet_backup: dict[str, torch.Tensor] = {}

    @property
    def is_lora(self) -> bool:
        return self.active is not None and self.active.lora is not None

    def read(self, directory: Path, *, what: str, source: str) -> TrainedWeights:
        return read_trained_weights(directory, self.shapes, what=what, source=source)

    def prompt(self, text: str) -> str:
        return substitute_tokens(text, self.active.token_map) if self.active else text

    def apply(self, tw: TrainedWeights) -> None:
        """Make ``tw`` the active weights (unloading any others); on any failure, back to the base model."""
        if self.active is not None and self.active.source == tw.source:
            return
        self.unload()
        try:
            self._load(tw)
        except BaseException:  # includes cancellation
            log.warning("loading %s failed; back to the base model", tw.source)
            self.active = tw  # so unload() knows what to take off
            self.unload()
            raise
        self.active = tw
        log.info("trained weights active: %s", tw.source)

    def _load(self, tw: TrainedWeights) -> None:
        base = self.models.base
        if tw.lora is not None:
            lora = {f"unet.{k}": v.to(base.unet.dtype) for k, v in tw.lora.items()}
            base.load_lora_weights(lora, adapter_name=ADAPTER)
        if tw.unet is not None:
            params = dict(base.unet.named_parameters())
            params.update(dict(base.unet.named_buffers()))
            with torch.no_grad():
                for key, value in tw.unet.items():
                    self._unet_backup[key] = params[key].detach().to("cpu", copy=True)
                    params[key].copy_(value.to(params[key].dtype))
        for rows, encoder, tokenizer in zip(
            tw.embeddings, (base.text_encoder, base.text_encoder_2), (base.tokenizer, base.tokenizer_2)
        ):
            base.load_textual_inversion(
                list(rows.to(encoder.dtype)), token=tw.tokens, text_encoder=encoder, tokenizer=tokenizer
            )

    def unload(self) -> None:
        """Back to the base model, bitwise."""
        tw, self.active = self.active, None
        if tw is None:
            return
        base = self.models.base
        if ADAPTER in (base.unet.peft_config if getattr(base.unet, "peft_config", None) else {}):
            base.unload_lora_weights()
        if self._unet_backup:
            params = dict(base.unet.named_parameters())
            params.update(dict(base.unet.named_buffers()))
            with torch.no_grad():
                for key, value in self._unet_backup.items():
                    params[key].copy_(value)
            self._unet_backup.clear()
        tokens = tw.tokens
        for encoder, tokenizer in ((base.text_encoder, base.tokenizer), (base.text_encoder_2, base.tokenizer_2)):
            present = [t for t in tokens if t in tokenizer.get_vocab()]
            if present:
                base.unload_textual_inversion(tokens=present, tokenizer=tokenizer, text_encoder=encoder)
        log.info("trained weights unloaded: %s", tw.source)
