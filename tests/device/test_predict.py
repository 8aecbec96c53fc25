"""The predictor's CUDA path, fp16: every mode, the safety checker, LoRA / full fine-tune load and unload,
the fast path (fused QKV, channels_last; compile + LoRA hot-swap; model CPU offload; VAE tiling)."""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
from devkit.media import init_image_and_mask
from devkit.oracle import DEFAULTS
from devkit.reference_tars import reference_lora_tar, reference_unet_tar
from PIL import Image

import weights
from device import standin
from device.standin import cpu_numbers, cuda_device, on_cuda
from sdxl import acceleration

MODES = {
    "txt2img": {},
    "img2img": {"image": "image"},
    "inpaint": {"image": "image", "mask": "mask"},
    "expert_ensemble_refiner": {"refine": "expert_ensemble_refiner"},
    "base_image_refiner": {"refine": "base_image_refiner", "image": "image"},
}
SMALL = dict(num_inference_steps=2, refine_steps=4, width=64, height=64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from diffusers import UNet2DConditionModel

    d = tmp_path_factory.mktemp("device-inputs")
    images = init_image_and_mask(d, square=False)
    unet = UNet2DConditionModel.from_pretrained(weights.resolve("sdxl-base"), subfolder="unet", variant="fp16")
    return {**images,
            "lora": reference_lora_tar(d / "lora" / "trained_model.tar", unet),
            "unet": reference_unet_tar(d / "unet" / "trained_model.tar", unet)}


@contextlib.contextmanager
def predictor_on_cuda(**env):
    """A set-up Predictor on CUDA; ``env``: the fast path's switches. Under the stand-in, compiled
    modules run their Python (dynamo is off: it cannot trace the stand-in tensors); on a real GPU they compile."""
    from predict import Predictor

    with cuda_device(), mock.patch.dict("os.environ", env), contextlib.ExitStack() as stack:
        if standin.active():
            stack.enter_context(mock.patch.object(torch._dynamo.config, "disable", True))
        stack.enter_context(mock.patch.object(acceleration, "WARM_UP_SIZE", 64))
        p = Predictor()
        p.setup()
        yield p


@pytest.fixture(scope="module")
def predictor():
    with predictor_on_cuda() as p:
        yield p


def predict(p, files, **overrides):
    args = {**DEFAULTS, **SMALL, **overrides}
    for name in ("image", "mask"):
        if isinstance(args[name], str):
            args[name] = files[args[name]]
    return [np.array(Image.open(path)) for path in p.predict(**args)]


def unet_numbers(p):
    return {k: cpu_numbers(v) for k, v in p.models.base.unet.state_dict().items()}


def test_models_on_cuda_in_fp16_with_the_fast_path(predictor):
    m = predictor.models
    assert (m.device, m.dtype) == ("cuda", torch.float16)
    for module in (m.base.unet, m.refiner.unet, m.base.vae, m.base.text_encoder, m.base.text_encoder_2,
                   m.safety.model):
        assert all(on_cuda(p) and p.dtype == torch.float16 for p in module.parameters())
    assert m.speed.fused and m.base.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cuda.matmul.allow_tf32
    processors = {type(p).__name__ for p in m.base.unet.attn_processors.values()}
    assert processors == {"FusedAttnProcessor2_0"}  # SDPA, with fused projections


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_on_cuda(predictor, files, mode):
    images = predict(predictor, files, **MODES[mode], num_outputs=2)
    assert len(images) == 2 and images[0].shape == (64, 64, 3)


def test_lora_and_full_fine_tune_load_and_unload_on_cuda(predictor, files):
    base_weights = unet_numbers(predictor)
    base_image = predict(predictor, files, prompt="a photo of a dog")[0]
    for tar in ("lora", "unet"):
        tuned = predict(predictor, files, prompt="a photo of TOK", replicate_weights=str(files[tar]), lora_scale=1.0)
        assert tuned[0].shape == (64, 64, 3)
        assert predictor.models.speed.fused == (tar == "unet")  # a LoRA needs the separate projections
    again = predict(predictor, files, prompt="a photo of a dog")[0]
    assert predictor.models.speed.fused
    after = unet_numbers(predictor)
    assert all(torch.equal(base_weights[k], after[k]) for k in base_weights)  # unloaded bitwise
    np.testing.assert_array_equal(again, base_image)


def test_compiled_path_hot_swaps_loras_and_parks_a_zero_lora(files, tmp_path):
    with predictor_on_cuda(SDXL_COMPILE="1", SDXL_COMPILE_CACHE=str(tmp_path / "cache")) as p:
        speed = p.models.speed
        assert speed.compiled and speed.hotswap and not speed.fused
        assert (tmp_path / "cache").is_dir()
        base_image = predict(p, files, prompt="a photo of a dog")[0]
        predict(p, files, replicate_weights=str(files["lora"]), lora_scale=1.0)
        lora_layers = {n for n, _ in p.models.base.unet.named_modules() if n.endswith("lora_A")}
        predict(p, files, prompt="a photo of a dog")  # back to base: the adapter stays, zeroed
        assert {n for n, _ in p.models.base.unet.named_modules() if n.endswith("lora_A")} == lora_layers
        np.testing.assert_array_equal(predict(p, files, prompt="a photo of a dog")[0], base_image)
        predict(p, files, replicate_weights=str(files["lora"]), lora_scale=0.5)  # hot-swapped in
        predict(p, files, replicate_weights=str(files["unet"]))  # a full fine-tune beside the parked adapter
        np.testing.assert_array_equal(predict(p, files, prompt="a photo of a dog")[0], base_image)


def test_cpu_offload_and_vae_tiling(files):
    with predictor_on_cuda(SDXL_CPU_OFFLOAD="1") as p, \
            mock.patch.object(acceleration, "VAE_TILING_ABOVE", 48 * 48):
        assert p.models.speed.offload
        images = predict(p, files, refine="expert_ensemble_refiner")
        assert images[0].shape == (64, 64, 3) and p.models.base.vae.use_tiling
