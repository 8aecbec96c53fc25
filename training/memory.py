"""The full fine-tune's memory plan, and its peak estimated from the model's shapes alone (meta device).

A full fine-tune (``is_lora=False``) of the 2.57 B-parameter SDXL UNet with AdamW needs about 52 GiB at
its first optimizer step: fp32 weights (9.6 GiB), fp32 grads (9.6), two fp32 moments (19.1), the foreach
temporaries, the fp32 text encoders, the activations. The plan that fits a 48 GB card:

- **fp32 master weights, fp32 grads** for the UNet: lr 1e-6 updates vanish in bf16 weights (the
  activations run in bf16 under autocast, the weights the optimizer updates stay fp32);
- **Adafactor** (``transformers.optimization.Adafactor``: no first moment, second moments factored
  into a row and a column vector per matrix) instead of AdamW: optimizer state drops from 2 x 4 bytes
  per parameter to a few MiB, and it updates one parameter at a time (no whole-model temporaries).
  It is the usual choice of full SDXL fine-tunes (kohya's sd-scripts); it needs no CUDA-only package
  (8-bit AdamW from bitsandbytes would, and still keeps 2 bytes of state per parameter). Run with a
  fixed lr (``relative_step=False, scale_parameter=False``), so ``unet_learning_rate``, the schedule
  and the pivot mean what they mean with AdamW;
- **gradient checkpointing** on CUDA (``loop.setup``): activations are kept at block boundaries only.

``full_finetune_peak`` adds these up for a UNet on the meta device (no memory used); the activation
term is measured there too, by running the forward pass on meta tensors and summing what autograd saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GiB = 1024**3


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes at the peak of a full fine-tune step (the first optimizer step, when every state exists)."""

    weights: int  # fp32 UNet
    grads: int  # fp32, one per trained weight
    optimizer_state: int
    step_temporaries: int  # what the optimizer step allocates on top
    text_encoders: int  # fp32, frozen but for the new embedding rows
    autocast_copies: int  # bf16 copies of the weights autocast casts once and keeps until the backward pass
    activations: int  # saved for backward (bf16 autocast, gradient checkpointing), plus one block recomputed

    @property
    def total(self) -> int:
        return (self.weights + self.grads + self.optimizer_state + self.step_temporaries + self.text_encoders
                + self.autocast_copies + self.activations)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in vars(self).items())
        return f"{self.total / GiB:.2f} GiB ({parts})"


def adafactor_state_bytes(params, bytes_per_value: int = 4) -> int:
    """Adafactor's state without a first moment: a row and a column vector per matrix (factored over the
    last two dimensions), a full second moment for vectors (as transformers' Adafactor allocates it)."""
    total = 0
    for p in params:
        shape = tuple(p.shape)
        if len(shape) >= 2:
            total += (_numel(shape[:-1]) + _numel(shape[:-2] + shape[-1:])) * bytes_per_value
        else:
            total += _numel(shape) * bytes_per_value
    return total


def adamw_state_bytes(params, bytes_per_value: int = 4) -> int:
    return 2 * sum(p.numel() for p in params) * bytes_per_value


def activation_bytes(unet, resolution: int, batch: int, dtype=torch.bfloat16) -> int:
    """Bytes autograd keeps for the backward pass of one training forward of ``unet`` (on the meta device),
    with gradient checkpointing as set on ``unet``, plus the largest checkpointed block's own activations
    (recomputed one at a time during the backward pass)."""
    device = torch.device("meta")
    latent = resolution // 8
    cross = unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    inputs = dict(
        sample=torch.empty(batch, unet.config.in_channels, latent, latent, device=device, dtype=dtype),
        timestep=torch.zeros(batch, device=device, dtype=torch.long),
        encoder_hidden_states=torch.empty(batch, 77, cross, device=device, dtype=dtype),
        added_cond_kwargs={"text_embeds": torch.empty(batch, pooled, device=device, dtype=dtype),
                           "time_ids": torch.empty(batch, 6, device=device, dtype=dtype)},
    )
    # meta tensors know no autocast: the forward runs with the weights in ``dtype`` (free on meta), which
    # saves the same activations; the weights themselves are not counted here (see autocast_copies)
    original = next(unet.parameters()).dtype
    unet.to(dtype)
    try:
        kept = _saved_bytes(lambda: unet(**inputs).sample)
        recompute = 0
        if unet.is_gradient_checkpointing:
            blocks = [m for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks)
                      for m in (*getattr(b, "resnets", ()), *(getattr(b, "attentions", None) or ()))]
            unet.disable_gradient_checkpointing()
            try:
                per_block = _saved_bytes_per_module(lambda: unet(**inputs).sample, blocks)
            finally:
                unet.enable_gradient_checkpointing()
            recompute = max(per_block)
    finally:
        unet.to(original)
    return kept + recompute


def full_finetune_peak(unet, text_encoders, resolution: int, batch: int, optimizer: str = "adafactor",
                       activations: int | None = None) -> MemoryPlan:
    """The plan above for ``unet`` (fp32 parameters, on the meta device) at ``resolution`` and ``batch``
    (``activations``: a measurement to reuse; it does not depend on the optimizer)."""
    params = [p for p in unet.parameters()]
    n = sum(p.numel() for p in params)
    if optimizer == "adafactor":
        state = adafactor_state_bytes(params)
        largest = max(p.numel() for p in params)
        temporaries = 3 * largest * 4  # grad**2, the approximated second moment, the fp32 update
    elif optimizer == "adamw":
        state = adamw_state_bytes(params)
        temporaries = n * 4  # foreach: at least one whole-model intermediate list
    else:
        raise ValueError(optimizer)
    encoders = sum(p.numel() for e in text_encoders for p in e.parameters()) * 4
    return MemoryPlan(weights=n * 4, grads=n * 4, optimizer_state=state, step_temporaries=temporaries,
                      text_encoders=encoders, autocast_copies=n * 2,
                      activations=activation_bytes(unet, resolution, batch) if activations is None else activations)


def _numel(shape) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


def _saved_bytes(forward) -> int:
    total = 0

    def pack(t):
        nonlocal total
        if not isinstance(t, torch.nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total


def _saved_bytes_per_module(forward, modules) -> list[int]:
    """What autograd saves inside each of ``modules`` during ``forward``."""
    sizes = [0] * len(modules)
    current = []

    def pack(t):
        if current and not isinstance(t, torch.nn.Parameter):
            sizes[current[-1]] += t.numel() * t.element_size()
        return t

    def enter(i):
        def hook(module, args):
            current.append(i)
        return hook

    def leave(module, args, output):
        current.pop()

    handles = []
    for i, m in enumerate(modules):
        handles.append(m.register_forward_pre_hook(enter(i)))
        handles.append(m.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward()
    finally:
        for h in handles:
            h.remove()
    return sizes
