"""The CPU backend: the same diffusers pipelines with their UNets, VAE and text encoders run by OpenVINO.

``SDXL_BACKEND=openvino`` (opt-in; the default ``torch`` keeps images bitwise equal to plain diffusers).
Each component is converted once per weight set (``torch.export`` of the torch module with dynamic
input sizes, then ``openvino.convert_model``) and cached as OpenVINO IR beside the weights, keyed by the weight
files and the settings; the next cold start compiles the cached IR without building the torch
module. The UNets and text encoders are int8 weight-compressed with nncf by default
(``SDXL_OPENVINO_WEIGHTS=fp32`` keeps them fp32, as stored); the VAE stays fp32 (OpenVINO's CPU plugin expands
int8 convolution weights back to f32: no gain).

The wrappers are ``torch.nn.Module``s that look enough like the diffusers/transformers modules for
the pipelines (``config``, ``dtype``, ``device``, the forward signature and outputs), so schedulers,
guidance, refiner hand-off, img2img/inpaint latents and the VAE's sampling stay diffusers' own torch
code. Text encoders take the token embeddings from a torch ``nn.Embedding`` (so textual-inversion
tokens load and unload through diffusers, unchanged); the OV model does the rest.

Weights are exported as stored (fp16 files): every parameter is cast to fp32 inside the exported
graph (a parametrization), so the IR holds fp16 constants with a Convert to f32, computes in f32
(``INFERENCE_PRECISION_HINT=f32``) and equals torch fp32 on the same files, at half the memory
while converting.

LoRAs and full fine-tunes (``replicate_weights``, ``COG_WEIGHTS``): the request runs the torch UNet
(loaded from the base weights on first use and kept), with diffusers/peft applying the fine-tune as
on the torch backend; foreign LoRAs with text-encoder layers also swap in torch text encoders.
Back to base swaps the OV modules in again. See README.md ("CPU: OpenVINO") for why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino")
WEIGHT_PRECISIONS = ("int8", "fp32")
INFERENCE_PRECISIONS = ("auto", "f32", "bf16")
FORMAT = "2"  # bump when the exported graphs change, so stale IR is not reused
COMPILED = "compiled"  # OpenVINO's compiled-model cache, in the IR cache


def backend() -> str:
    """``SDXL_BACKEND``: ``torch`` (default) or ``openvino``."""
    name = os.environ.get("SDXL_BACKEND", "").strip().lower() or "torch"
    if name not in BACKENDS:
        raise ValueError(f"SDXL_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "openvino" and torch.cuda.is_available():
        log.warning("SDXL_BACKEND=openvino on a machine with CUDA: running on the CPU with OpenVINO")
    return name


def inference_precision() -> str:
    """``SDXL_OPENVINO_INFERENCE``, the UNets' compute precision: ``auto`` (default: OpenVINO's own choice, bf16 on
    CPUs with AMX / avx512_bf16 and f32 elsewhere, as OpenVINO's SDXL tutorial runs), ``f32`` (computes as torch
    fp32 does: the images closest to diffusers') or ``bf16``."""
    p = os.environ.get("SDXL_OPENVINO_INFERENCE", "").strip().lower() or "auto"
    if p not in INFERENCE_PRECISIONS:
        raise ValueError(f"SDXL_OPENVINO_INFERENCE={p!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
    return p


def weight_precision() -> str:
    """``SDXL_OPENVINO_WEIGHTS`` (formerly ``SDXL_OPENVINO_UNET``): ``int8`` (default, nncf weight compression of
    the UNets and text encoders) or ``fp32``."""
    name = "SDXL_OPENVINO_WEIGHTS" if os.environ.get("SDXL_OPENVINO_WEIGHTS") else "SDXL_OPENVINO_UNET"
    p = os.environ.get(name, "").strip().lower() or "int8"
    if p not in WEIGHT_PRECISIONS:
        raise ValueError(f"{name}={p!r}: expected one of {', '.join(WEIGHT_PRECISIONS)}")
    return p


# ---------------------------------------------------------------- conversion and the on-disk cache


class _Fp32(nn.Module):
    """Parametrization: the stored (fp16) tensor, cast to fp32 where the graph uses it."""

    def forward(self, x):
        return x.float()


def _cast_in_graph(module: nn.Module) -> nn.Module:
    from torch.nn.utils import parametrize

    for m in list(module.modules()):
        for name, p in list(m.named_parameters(recurse=False)):
            if p.dtype != torch.float32:
                parametrize.register_parametrization(m, name, _Fp32(), unsafe=True)
    return module


class _UNetExport(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        return self.unet(sample, timestep, encoder_hidden_states,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}, return_dict=False)[0]


class _Given(nn.Module):
    """Stands in for the token embedding while exporting: returns the embeddings given to the export (held
    only during the call: export takes a tensor left on a module for state)."""

    def __init__(self):
        super().__init__()
        self.held: list[torch.Tensor] = []

    def forward(self, input_ids):
        return self.held[-1]


class _TextExport(nn.Module):
    """The transformers text encoder from token embeddings on (positions, layers, norm, pooling, projection)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.given = _Given()
        encoder.set_input_embeddings(self.given)

    def forward(self, input_ids, token_embeds):
        self.given.held[:] = [token_embeds]
        try:
            out = self.encoder(input_ids, output_hidden_states=True)
        finally:
            self.given.held.clear()
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output  # with projection or not
        return out.last_hidden_state, pooled, torch.stack(out.hidden_states)


class _VaeDecode(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z, return_dict=False)[0]


class _VaeEncode(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        return self.vae.encode(x).latent_dist.parameters


def _key(directory: Path, *settings, files: tuple[Path, ...] = ()) -> str:
    """The weight files (name, size, mtime) and config of ``directory`` and ``files`` plus ``settings``, hashed."""
    from importlib.metadata import version

    # the versions from the package metadata: importing nncf costs a cold start seconds
    h = hashlib.sha256(json.dumps([FORMAT, version("openvino"), version("nncf"), *settings]).encode())
    for f in [*sorted(directory.iterdir()), *files]:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_root(weights_dir: Path) -> Path:
    """``SDXL_OPENVINO_CACHE``, else ``<weight set>/openvino`` (beside the weights) when writable, else the
    user cache."""
    env = os.environ.get("SDXL_OPENVINO_CACHE")
    if env:
        return Path(env)
    beside = weights_dir / "openvino"
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    return Path.home() / ".cache" / "cog-sdxl" / "openvino" / hashlib.sha256(str(weights_dir).encode()).hexdigest()[:12]


def converted(weights_dir: Path, component: str, kind: str, precision: str, export,
              files: tuple[Path, ...] = ()) -> Path:
    """The IR (``model.xml``) of ``component`` (a sub-folder of ``weights_dir``, plus ``files`` its weights may
    come from), converting it with ``export()`` -> ov.Model the first time. Written to a temporary directory and
    renamed into place."""
    name = f"{component}-{kind}-{precision}-{_key(weights_dir / component, kind, precision, files=files)}"
    root = cache_root(weights_dir)
    dest = root / name
    if (dest / "model.xml").is_file():
        return dest / "model.xml"
    import openvino as ov

    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if precision == "int8":  # compressed from the fp32 IR (converted first if needed): no second export
        import nncf

        model = nncf.compress_weights(_core().read_model(converted(weights_dir, component, kind, "fp32", export,
                                                                   files)))
    else:
        model = export()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
        del model
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "model.xml").is_file():  # someone else won the race: theirs is identical
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s/%s (%s, %s) to OpenVINO in %.1fs", weights_dir.name, component, kind, precision,
             time.monotonic() - start)
    return dest / "model.xml"


def _convert(module: nn.Module, example: tuple):
    """``torch.export`` ``module`` with every input dimension dynamic (``Dim.AUTO``: kept dynamic unless the
    graph fixes it), and convert the exported program. Exporting traces with fake tensors: the weights are
    not read until ``openvino.convert_model`` shares them (fp16, memory-mapped) and ``save_model`` writes them,
    so converting the SDXL UNet peaks at about the size of its fp16 weights (a TorchScript trace ran the
    parametrizations for real and held every fp32 weight: 3x more)."""
    import openvino as ov
    from torch.export import Dim

    # the examples' dynamic sizes are all different and none is 1: export gives equal sizes one symbol and
    # fixes sizes of 1 (a VAE exported at batch 1 returned nothing at batch 2)
    dynamic = tuple({i: Dim.AUTO for i in range(t.dim())} for t in example)
    return ov.convert_model(torch.export.export(module, example, dynamic_shapes=dynamic))


def _variant(directory: Path) -> str | None:
    return "fp16" if any(directory.glob("*.fp16.safetensors")) else None


def _torch_unet(directory: Path, dtype: torch.dtype, unet_file: str | None = None):
    """The torch UNet of a weight set: ``unet/``, or ``unet/config.json`` with the weights of ``unet_file`` (one
    state-dict file, as SDXL-Lightning ships its UNets)."""
    from diffusers import UNet2DConditionModel

    if unet_file is None:
        return UNet2DConditionModel.from_pretrained(directory, subfolder="unet", variant=_variant(directory / "unet"),
                                                    use_safetensors=True, dtype=dtype)
    from safetensors.torch import load_file

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(directory, subfolder="unet"))
    unet.load_state_dict({k: v.to(dtype) for k, v in load_file(directory / unet_file).items()}, assign=True)
    return unet


def export_unet(directory: Path, time_ids: int, unet_file: str | None = None):
    def export():
        unet = _torch_unet(directory, torch.float16, unet_file)
        cfg = unet.config
        # an odd latent size: the exported graph forwards the skip connections' sizes to the upsamplers
        # (diffusers' branch for sizes that are not a multiple of 2**upsamplers), valid for every size
        h = 2 ** unet.num_upsamplers + 1
        text = unet.add_embedding.linear_1.in_features - cfg.addition_time_embed_dim * time_ids
        example = (torch.randn(2, cfg.in_channels, h, h + 2), torch.tensor([500.0, 500.0]),
                   torch.randn(2, 77, cfg.cross_attention_dim), torch.randn(2, text), torch.randn(2, time_ids))
        with torch.no_grad():
            return _convert(_UNetExport(_cast_in_graph(unet)), example)

    return export


def export_text(directory: Path, component: str, cls):
    def export():
        encoder = cls.from_pretrained(directory, subfolder=component, variant=_variant(directory / component),
                                      use_safetensors=True, dtype=torch.float16)
        dim = encoder.get_input_embeddings().embedding_dim
        ids = torch.zeros(2, 77, dtype=torch.long)
        ids[:, 5] = encoder.config.eos_token_id
        with torch.no_grad():
            return _convert(_TextExport(_cast_in_graph(encoder)), (ids, torch.randn(2, 77, dim)))

    return export


def export_vae(directory: Path, part: str):
    from diffusers import AutoencoderKL

    def export():
        vae = AutoencoderKL.from_pretrained(directory, subfolder="vae", variant=_variant(directory / "vae"),
                                            use_safetensors=True, dtype=torch.float16)
        module = (_VaeDecode if part == "decoder" else _VaeEncode)(_cast_in_graph(vae))
        example = (torch.randn(2, vae.config.latent_channels, 9, 11) if part == "decoder"
                   else torch.randn(2, 3, 72, 88))
        with torch.no_grad():
            return _convert(module, (example,))

    return export


_CORE = None


def _core():
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def compile_ir(xml: Path, precision: str = "f32"):
    """Compile for the CPU, latency-oriented, with torch's thread count and no thread pinning (the process runs
    torch too). ``precision`` f32: no bf16/f16 downcast, as torch fp32 computes; ``auto``: OpenVINO's default for
    this CPU (the UNets: SDXL_OPENVINO_INFERENCE; the text encoders and VAE: f32).
    OpenVINO keeps the compiled model in ``compiled/<precision>/`` beside the IR (its model cache): a later cold
    start imports it instead of compiling again. One folder per precision: OpenVINO 2026.4's cache key leaves
    the precision out, and a bf16 compile that imported the f32 blob crashed (test_openvino.py)."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
              "ENABLE_CPU_PINNING": False, "CACHE_DIR": str(xml.parent.parent / COMPILED / precision)}
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = precision
    return _core().compile_model(str(xml), "CPU", config)


# ---------------------------------------------------------------- the modules the pipelines see


def _meta(cls, directory: Path, subfolder: str):
    """An uninitialised (meta-device) module of the weight set's config: its config, shapes and names."""
    with torch.device("meta"):
        if hasattr(cls, "load_config"):  # diffusers
            return cls.from_config(cls.load_config(directory, subfolder=subfolder))
        from transformers import AutoConfig

        return cls(AutoConfig.from_pretrained(directory / subfolder))


class _OVModule(nn.Module):
    """What the pipelines read of a module besides calling it: fp32 on the CPU, no-op ``to()``."""

    ir: Path | None = None  # the IR it was compiled from (the UNets and text encoders record it)

    def __init__(self, compiled, meta):
        super().__init__()
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        object.__setattr__(self, "meta", meta)  # not a sub-module: nothing for pipelines to walk or move
        self.config = meta.config

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, *args, **kwargs):
        return self

    def _infer(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        out = self._request.infer([t.detach().to(torch.float32).contiguous().numpy() if t.is_floating_point()
                                   else t.detach().contiguous().numpy() for t in inputs])
        return [torch.from_numpy(out[i].copy()) for i in range(len(out))]


class OVUNet(_OVModule):
    def __init__(self, compiled, meta):
        super().__init__(compiled, meta)
        self.add_embedding = SimpleNamespace(linear_1=SimpleNamespace(in_features=meta.add_embedding.linear_1.in_features))

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, attention_mask=None,
                cross_attention_kwargs=None, added_cond_kwargs=None, down_block_additional_residuals=None,
                mid_block_additional_residual=None, down_intrablock_additional_residuals=None,
                encoder_attention_mask=None, return_dict: bool = True):
        unsupported = {k: v for k, v in dict(timestep_cond=timestep_cond, attention_mask=attention_mask,
                                             down_block_additional_residuals=down_block_additional_residuals,
                                             mid_block_additional_residual=mid_block_additional_residual,
                                             down_intrablock_additional_residuals=down_intrablock_additional_residuals,
                                             encoder_attention_mask=encoder_attention_mask).items() if v is not None}
        if unsupported:
            raise NotImplementedError(f"the OpenVINO UNet does not take {', '.join(unsupported)}")
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep])
        timestep = timestep.reshape(-1).to(torch.float32).expand(sample.shape[0])
        (out,) = self._infer(sample, timestep, encoder_hidden_states,
                             added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"])
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


class OVVae(_OVModule):
    def __init__(self, decoder, encoder, meta):
        super().__init__(decoder, meta)
        self._encoder = encoder.create_infer_request()
        self.use_tiling = self.use_slicing = False

    def enable_tiling(self, *args, **kwargs) -> None:
        """The IR decodes whole images of any size in host memory; tiling is the torch VAE's GPU-memory saver."""

    def disable_tiling(self) -> None:
        """Nothing to undo (see enable_tiling)."""

    def decode(self, z, return_dict: bool = True, generator=None):
        (image,) = self._infer(z)
        if not return_dict:
            return (image,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=image)

    def encode(self, x, return_dict: bool = True):
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        out = self._encoder.infer([x.detach().to(torch.float32).contiguous().numpy()])
        posterior = DiagonalGaussianDistribution(torch.from_numpy(out[0].copy()))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def forward(self, sample, sample_posterior=False, return_dict=True, generator=None):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)


class OVTextEncoder(_OVModule):
    """A CLIP text encoder: token embeddings in torch (textual inversion edits them), the rest in OpenVINO."""

    def __init__(self, compiled, meta, embedding: nn.Embedding):
        super().__init__(compiled, meta)
        self.embedding = embedding
        self.with_projection = hasattr(meta, "text_projection")

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embedding = value

    def resize_token_embeddings(self, n: int) -> nn.Embedding:
        old = self.embedding.weight.data
        new = nn.Embedding(n, old.shape[1], dtype=old.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[: min(n, old.shape[0])] = old[:n]
        self.embedding = new
        return new

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=None,
                return_dict=True, **kwargs):
        if attention_mask is not None or position_ids is not None:
            raise NotImplementedError("the OpenVINO text encoder takes input_ids only")
        with torch.no_grad():
            embeds = self.embedding(input_ids)
        first, pooled, hidden = self._infer(input_ids, embeds)
        hidden = tuple(hidden.unbind(0)) if output_hidden_states else None
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.clip.modeling_clip import CLIPTextModelOutput

        if self.with_projection:
            return CLIPTextModelOutput(text_embeds=pooled, last_hidden_state=first, hidden_states=hidden)
        return BaseModelOutputWithPooling(last_hidden_state=first, pooler_output=pooled, hidden_states=hidden)


def _embedding(directory: Path, component: str) -> nn.Embedding:
    """The token embedding of a text encoder, read alone from its safetensors file, as fp32."""
    from safetensors import safe_open

    for f in sorted((directory / component).glob("*.safetensors")):
        if (".fp16." in f.name) != (_variant(directory / component) == "fp16"):
            continue
        with safe_open(f, framework="pt") as st:
            key = next((k for k in st.keys() if k.endswith("embeddings.token_embedding.weight")), None)
            if key is not None:
                weight = st.get_tensor(key).to(torch.float32)
                emb = nn.Embedding(*weight.shape)
                emb.weight.data = weight
                return emb
    raise FileNotFoundError(f"no token embedding in {directory / component}")


# ---------------------------------------------------------------- pipelines


class OpenVINOComponents:
    """The OV modules of the pipelines and the torch modules swapped in for fine-tunes."""

    def __init__(self, base_dir: Path, pipes: list, refiner, unet_file: str | None = None):
        self.base_dir = base_dir
        self.unet_file = unet_file  # the UNet's weights file (SDXL-Lightning), when not unet/
        self.pipes = pipes  # base, img2img, inpaint
        self.refiner = refiner  # keeps its OV UNet; shares the base's text_encoder_2
        self.ov = {}
        self.torch = {}

    def swap(self, names: tuple[str, ...], to_torch: bool) -> None:
        for name in names:
            module = self._torch_module(name) if to_torch else self.ov[name]
            for pipe in self.pipes + ([self.refiner] if name == "text_encoder_2" and self.refiner else []):
                setattr(pipe, name, module)

    def _torch_module(self, name: str):
        if name not in self.torch:
            start = time.monotonic()
            self.torch[name] = _load_torch(self.base_dir, name, self.unet_file)
            log.info("loaded the torch %s for fine-tunes in %.1fs", name, time.monotonic() - start)
        return self.torch[name]

    @contextlib.contextmanager
    def meta_modules(self):
        """The pipelines with the meta (shape-only) modules in: what BaseShapes reads."""
        saved = {n: self.pipes[0].components[n] for n in ("unet", "text_encoder", "text_encoder_2")}
        try:
            for n, m in saved.items():
                setattr(self.pipes[0], n, m.meta if isinstance(m, _OVModule) else m)
            yield
        finally:
            for n, m in saved.items():
                setattr(self.pipes[0], n, m)


def _load_torch(directory: Path, name: str, unet_file: str | None = None):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if name == "unet":
        return _torch_unet(directory, torch.float32, unet_file)
    cls = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}[name]
    return cls.from_pretrained(directory, subfolder=name, variant=_variant(directory / name), use_safetensors=True,
                               dtype=torch.float32)


def converted_unet(directory: Path, precision: str, time_ids: int, unet_file: str | None = None) -> OVUNet:
    """``time_ids``: 6 for the base (size, crop, target size), 5 for the refiner (aesthetic score instead)."""
    from diffusers import UNet2DConditionModel

    files = (directory / unet_file,) if unet_file else ()
    xml = converted(directory, "unet", "unet", precision, export_unet(directory, time_ids, unet_file), files)
    unet = OVUNet(compile_ir(xml, inference_precision()), _meta(UNet2DConditionModel, directory, "unet"))
    unet.ir = xml
    return unet


def text_encoders(directory: Path) -> dict[str, OVTextEncoder]:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    texts = {}
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        xml = converted(directory, name, "text", weight_precision(), export_text(directory, name, cls))
        texts[name] = OVTextEncoder(compile_ir(xml), _meta(cls, directory, name), _embedding(directory, name))
        texts[name].ir = xml
    return texts


def vae(directory: Path) -> OVVae:
    from diffusers import AutoencoderKL

    decoder = converted(directory, "vae", "decoder", "fp32", export_vae(directory, "decoder"))
    encoder = converted(directory, "vae", "encoder", "fp32", export_vae(directory, "encoder"))
    return OVVae(compile_ir(decoder), compile_ir(encoder), _meta(AutoencoderKL, directory, "vae"))


def base_pipeline(directory: Path, unet_file: str | None = None, reuse: dict | None = None):
    """The StableDiffusionXLPipeline of a weight set on OpenVINO modules; ``reuse`` holds modules already made
    from the same files (text encoders, VAE), as sdxl.fewstep shares them between models."""
    import diffusers
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    reuse = reuse or {}
    index = json.loads((directory / "model_index.json").read_text())
    texts = ({n: reuse[n] for n in ("text_encoder", "text_encoder_2")} if "text_encoder_2" in reuse
             else text_encoders(directory))
    return StableDiffusionXLPipeline(
        vae=reuse.get("vae") or vae(directory), **texts,
        tokenizer=reuse.get("tokenizer") or CLIPTokenizer.from_pretrained(directory / "tokenizer"),
        tokenizer_2=reuse.get("tokenizer_2") or CLIPTokenizer.from_pretrained(directory / "tokenizer_2"),
        unet=converted_unet(directory, weight_precision(), time_ids=6, unet_file=unet_file),
        scheduler=getattr(diffusers, index["scheduler"][1]).from_pretrained(directory, subfolder="scheduler"),
        force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
        add_watermarker=False,
    )


def load_pipelines(base_dir: Path, refiner_dir: Path):
    """The base and refiner pipelines (as sdxl.models builds them) on OpenVINO modules."""
    import diffusers
    from diffusers import StableDiffusionXLImg2ImgPipeline

    start = time.monotonic()
    base = base_pipeline(base_dir)
    index = json.loads((refiner_dir / "model_index.json").read_text())
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
        tokenizer_2=base.tokenizer_2, unet=converted_unet(refiner_dir, weight_precision(), time_ids=5),
        scheduler=getattr(diffusers, index["scheduler"][1]).from_pretrained(refiner_dir, subfolder="scheduler"),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False,
    )
    log.info("OpenVINO modules ready (UNets and text encoders %s) in %.1fs", weight_precision(),
             time.monotonic() - start)
    return base, refiner


def attach(models, base_dir: Path, unet_file: str | None = None) -> None:
    """Record what fine-tunes need on ``models`` (after sdxl.models built img2img/inpaint from ``base``)."""
    components = OpenVINOComponents(base_dir, [models.base, models.img2img, models.inpaint], models.refiner,
                                    unet_file)
    components.ov = {n: getattr(models.base, n) for n in ("unet", "text_encoder", "text_encoder_2")}
    models.openvino = components


# ---------------------------------------------------------------- fine-tunes


def make_finetunes(models):
    """The predictor's FineTunes: the plain one, or on OpenVINO the one that swaps torch modules in."""
    from .finetune import FineTunes

    if getattr(models, "openvino", None) is None:
        return FineTunes(models)

    class OpenVINOFineTunes(FineTunes):
        """LoRAs and full fine-tunes run on the torch UNet (and, for foreign LoRAs, the torch text encoders);
        textual-inversion tokens of a tar load into the OV text encoders' torch embeddings."""

        def __init__(self, models):
            with models.openvino.meta_modules():
                super().__init__(models)

        def _load(self, tw):
            torch_parts = ("unet",) if (tw.lora is not None or tw.unet is not None) else ()
            if tw.foreign_lora is not None:
                torch_parts = ("unet", "text_encoder", "text_encoder_2")
            self.models.openvino.swap(torch_parts, to_torch=True)
            super()._load(tw)

        def unload(self):
            super().unload()
            self.models.openvino.swap(("unet", "text_encoder", "text_encoder_2"), to_torch=False)

    return OpenVINOFineTunes(models)
