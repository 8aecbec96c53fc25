"""Applying trained weights to the shared pipelines, switching between them, and back to the base.

Where the weights come from is ``weights.sources``' business; here they are read and checked first
(``trained_weights``), then applied; a failure (or cancellation) while applying rolls back to the base
model. Unloading restores the base weights bitwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from weights.cache import WeightsCache
from weights.sources import local_weights

from .acceleration import ADAPTER  # defined there: the compiled fast path loads it at setup
from .models import Models
from .trained_weights import BaseShapes, TrainedWeights, base_name, read_weights
from .trigger import substitute

log = logging.getLogger(__name__)


def substitute_tokens(prompt: str, token_map: dict[str, str]) -> str:
    """Replace each trigger word (e.g. TOK) with its tokens, by the trainer's rule (``sdxl.trigger``:
    whole words, exact spelling: "TOKYO" stays)."""
    for word, tokens in token_map.items():
        prompt = substitute(prompt, word, tokens)
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
        return self.active is not None and self.active.has_lora

    def use(self, source: str | None, cache: WeightsCache, *, input_name: str, operator_given: bool = False) -> None:
        """Make ``source`` (see ``weights.sources``; None: the base model) the active weights.

        The same source as now is a no-op; anything else is fetched and checked before the pipeline
        is touched, so a bad or failed download leaves the current weights in place (and nothing refused
        stays in the cache). ``input_name`` is the input errors blame; ``operator_given`` marks the
        operator's own value (COG_WEIGHTS), which may be any path.
        """
        if not source:
            self.unload()
        elif self.active is None or self.active.source != source:
            with local_weights(source, cache, input_name=input_name, operator_given=operator_given) as path:
                trained = self.read(path, input_name=input_name, source=source)
            self.apply(trained)

    def use_for_request(self, replicate_weights: str | None, default_weights: str | None, cache: WeightsCache) -> None:
        """A request's weights: its ``replicate_weights`` (a user's value), else the deployment's COG_WEIGHTS (the
        operator's, which may be any path), else the base model."""
        if replicate_weights:
            self.use(replicate_weights, cache, input_name="replicate_weights")
        else:
            self.use(default_weights, cache, input_name="COG_WEIGHTS", operator_given=True)

    def read(self, path: Path, *, input_name: str, source: str) -> TrainedWeights:
        """Read and check ``path`` (a directory or a single file) without touching the pipeline."""
        return read_weights(path, self.shapes, input_name=input_name, source=source)

    def rewrite_prompt(self, text: str) -> str:
        """``text`` with the active weights' trigger words (e.g. TOK) replaced by their tokens."""
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
        if self._speed and not tw.has_lora:
            self._speed.fuse(self.models)  # a full fine-tune: fused from its weights
        log.info("trained weights active: %s%s", tw.source, f" ({tw.lora_kind})" if tw.lora_kind else "")

    @property
    def _speed(self):
        """The GPU fast path's state (sdxl.acceleration), when the models have one."""
        return getattr(self.models, "speed", None)

    def _hotswap(self) -> bool:
        """Whether LoRAs go into the one existing adapter in place (the compiled fast path: no recompiling)."""
        speed = self._speed
        return bool(speed and speed.hotswap) and ADAPTER in (getattr(self.models.base.unet, "peft_config", None) or {})

    def _unet_tensors(self) -> dict[str, torch.Tensor]:
        """The base UNet's parameters and buffers by their plain names (without any adapter's layers)."""
        unet = self.models.base.unet
        tensors = {**dict(unet.named_parameters()), **dict(unet.named_buffers())}
        return {base_name(k): v for k, v in tensors.items() if ".lora_" not in k}

    def _into_unet(self, load) -> None:
        """``load(hotswap)``: hot-swapped into the compiled adapter when it fits, else loaded anew."""
        if not self._hotswap():
            return load(False)
        try:
            load(True)
        except (ValueError, RuntimeError) as e:
            log.info("hot-swap refused: %s", e)
            from .acceleration import leave_hotswap

            leave_hotswap(self.models, self._speed)
            load(False)

    def _load(self, tw: TrainedWeights) -> None:
        base = self.models.base
        if self._speed:
            self._speed.unfuse(self.models)  # trained weights change the separate projections
        if tw.lora is not None:
            dtype = base.unet.dtype  # a property that walks every parameter: read it once
            lora = {f"unet.{k}": v.to(dtype) for k, v in tw.lora.items()}
            self._into_unet(lambda hot: base.load_lora_weights(lora, adapter_name=ADAPTER, hotswap=hot))
        if tw.foreign_lora is not None:
            self._load_foreign_lora(tw)
        if tw.unet is not None:
            params = self._unet_tensors()
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

    def _load_foreign_lora(self, tw: TrainedWeights) -> None:
        """As ``load_lora_weights`` does it (lora_state_dict, then UNet and both text encoders), plus the
        adapter metadata of the file, which diffusers only reads when it opens the file itself."""
        base = self.models.base
        dtype = base.unet.dtype
        state = {k: v.to(dtype) if v.is_floating_point() and not k.endswith(".alpha") else v
                 for k, v in tw.foreign_lora.items()}
        state, alphas = type(base).lora_state_dict(state, unet_config=base.unet.config)
        self._into_unet(lambda hot: base.load_lora_into_unet(
            state, network_alphas=alphas, unet=base.unet, adapter_name=ADAPTER, metadata=tw.lora_metadata,
            _pipeline=base, hotswap=hot))
        for prefix, encoder in (("text_encoder", base.text_encoder), ("text_encoder_2", base.text_encoder_2)):
            base.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=encoder, prefix=prefix,
                                             lora_scale=base.lora_scale, adapter_name=ADAPTER,
                                             metadata=tw.lora_metadata, _pipeline=base)

    def unload(self) -> None:
        """Back to the base model, bitwise."""
        tw, self.active = self.active, None
        if tw is None:
            return
        base = self.models.base
        speed = self._speed
        if speed:
            speed.unfuse(self.models)
        if speed and speed.hotswap:
            self._park_lora()
        elif any(ADAPTER in (getattr(m, "peft_config", None) or {})
                 for m in (base.unet, base.text_encoder, base.text_encoder_2)):
            base.unload_lora_weights()
        if self._unet_backup:
            params = self._unet_tensors()
            with torch.no_grad():
                for key, value in self._unet_backup.items():
                    params[key].copy_(value)
            self._unet_backup.clear()
        tokens = tw.tokens
        for encoder, tokenizer in ((base.text_encoder, base.tokenizer), (base.text_encoder_2, base.tokenizer_2)):
            present = [t for t in tokens if t in tokenizer.added_tokens_encoder]  # not get_vocab(): it copies 49k entries
            if present:
                base.unload_textual_inversion(tokens=present, tokenizer=tokenizer, text_encoder=encoder)
        if speed:
            speed.fuse(self.models)
        log.info("trained weights unloaded: %s", tw.source)

    def _park_lora(self) -> None:
        """Back to the base model without changing the compiled UNet's structure: the UNet's adapter
        stays, with its up-projections zeroed (a zero delta: the base output exactly); the next LoRA is
        hot-swapped into it. Text-encoder adapters (not compiled) are removed."""
        base = self.models.base
        if ADAPTER in (getattr(base.unet, "peft_config", None) or {}):
            with torch.no_grad():
                for name, p in base.unet.named_parameters():
                    if ".lora_B." in name:
                        p.zero_()
        for encoder in (base.text_encoder, base.text_encoder_2):
            if ADAPTER in (getattr(encoder, "peft_config", None) or {}):
                encoder.delete_adapter(ADAPTER)
