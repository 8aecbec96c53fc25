"""The fixes this bench proposes for sdxl/ (which the bench does not own), applied as patches with ``--fixes``
so that the same run measures the figures before and after. Each is the diff given in bench/README.md."""

from __future__ import annotations


def apply() -> None:
    _from_pipe_keeps_dtype()
    _lora_dtype_once()


class _KeepDtype:
    """sdxl/models.py: ``X.from_pipe(base)`` -> ``X.from_pipe(base, dtype=dtype)``. diffusers 0.42's from_pipe
    defaults to dtype=float32 and calls ``.to(float32)`` on the SHARED modules: fp16 weights (GPU) become fp32."""

    def __init__(self, cls):
        self.cls = cls

    def __call__(self, *a, **kw):
        return self.cls(*a, **kw)

    def from_pipe(self, pipe, **kw):
        kw.setdefault("dtype", pipe.unet.dtype)
        return self.cls.from_pipe(pipe, **kw)


def _from_pipe_keeps_dtype() -> None:
    import sdxl.models as m

    for name in ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"):
        cls = getattr(m, name)
        if not isinstance(cls, _KeepDtype):
            setattr(m, name, _KeepDtype(cls))


def _lora_dtype_once() -> None:
    """sdxl/finetune.py FineTunes._load: ``base.unet.dtype`` (a walk over every parameter of the UNet) is evaluated
    once per LoRA tensor inside the dict comprehension; evaluated once instead. The rest of _load is unchanged."""
    import torch

    import sdxl.finetune as f

    if getattr(f.FineTunes._load, "_bench_fixed", False):
        return

    def _load(self, tw):
        base = self.models.base
        if tw.lora is not None:
            dtype = base.unet.dtype
            lora = {f"unet.{k}": v.to(dtype) for k, v in tw.lora.items()}
            base.load_lora_weights(lora, adapter_name=f.ADAPTER)
        if getattr(tw, "foreign_lora", None) is not None:
            self._load_foreign_lora(tw)
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

    _load._bench_fixed = True
    f.FineTunes._load = _load
