"""The full fine-tune fits a 48 GB card: its memory plan (training/memory.py) for the FULL-SIZE SDXL UNet,
computed on the meta device (shapes only, no memory), and the trainer really uses that plan."""

from __future__ import annotations

import pytest
import torch

from training import loop
from training.memory import GiB, full_finetune_peak


@pytest.fixture(scope="module")
def full_size():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bench.full_weights import TEXT_ENCODER, TEXT_ENCODER_2, UNET_BASE  # the real SDXL 1.0 architectures

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNET_BASE)
        encoders = [CLIPTextModel(CLIPTextConfig(vocab_size=49408 + 2, **TEXT_ENCODER)),
                    CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408 + 2, **TEXT_ENCODER_2))]
    unet.train().requires_grad_(True)
    unet.enable_gradient_checkpointing()  # as loop.setup on CUDA
    return unet, encoders


def test_full_finetune_of_full_size_sdxl_fits_44_gib_at_1024(full_size):
    unet, encoders = full_size
    assert 2.5e9 < sum(p.numel() for p in unet.parameters()) < 2.6e9  # the real base UNet
    plan = full_finetune_peak(unet, encoders, resolution=1024, batch=1)
    assert plan.total <= 44 * GiB, plan.describe()
    assert plan.optimizer_state < 1 * GiB and plan.activations > 1 * GiB  # factored state; activations measured
    adamw = full_finetune_peak(unet, encoders, resolution=1024, batch=1, optimizer="adamw",
                               activations=plan.activations)
    assert adamw.total > 48 * GiB, adamw.describe()  # what the plan avoids


def test_full_finetune_trains_with_adafactor_and_lora_with_adamw(prepared, tmp_path, small_config):
    from transformers.optimization import Adafactor

    full = loop.setup(small_config(is_lora=False, max_train_steps=2), prepared)
    optimizer, _ = loop.make_optimizer(full)
    assert isinstance(optimizer, Adafactor) and optimizer.param_groups[1]["lr"] == small_config().unet_learning_rate
    before = {k: v.clone() for k, v in full.unet.state_dict().items() if "attn2.to_k" in k}
    loop.fit(full, tmp_path)
    assert any(not torch.equal(v, full.unet.state_dict()[k]) for k, v in before.items())
    lora = loop.setup(small_config(max_train_steps=1), prepared)
    assert isinstance(loop.make_optimizer(lora)[0], torch.optim.AdamW)
