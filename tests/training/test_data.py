"""The prepared dataset, the latent cache (one VAE encode per image), the masked loss, verbose logging."""

from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKL

from training import loop
from training.data import LatentCache, PreparedDataset


def test_latents_are_encoded_once_per_image_and_masks_downsampled(prepared, base_dir):
    vae = AutoencoderKL.from_pretrained(base_dir, subfolder="vae", variant="fp16", torch_dtype=torch.float32)
    calls = []
    vae.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    ds = PreparedDataset(prepared, 64)
    cache = LatentCache.build(ds, vae, torch.device("cpu"))
    assert calls == [1, 1]  # each image once
    assert cache.latents.shape == (2, 4, 8, 8) and cache.masks.shape == (2, 1, 8, 8)
    # the mask is 255 on the central square [16, 48) -> latent cells 2..5
    expected = torch.zeros(8, 8)
    expected[2:6, 2:6] = 1
    assert torch.equal(cache.masks[0, 0], expected)
    assert cache.time_ids.tolist() == [[64, 64, 0, 0, 64, 64]] * 2  # original size, crop top-left, target size
    latents, masks, time_ids, captions = cache.batch(torch.tensor([1]))
    assert torch.equal(latents[0], cache.latents[1]) and captions == ["a photo of TOK, a man 1"]


def test_masked_loss_ignores_what_is_outside_the_mask():
    target = torch.zeros(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    pred = target.clone()
    pred[:, :, 4:] = 100.0  # wrong only outside the mask
    assert loop.masked_mse(pred, target, mask).item() == 0
    pred[:, :, :4] = 2.0  # inside: mean over the masked area only
    assert loop.masked_mse(pred, target, mask).item() == 4.0


def test_verbose_controls_log_detail(prepared, tmp_path, small_config, caplog):
    def step_lines(verbose):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="training"):
            loop.fit(loop.setup(small_config(max_train_steps=4, verbose=verbose), prepared), tmp_path)
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ") and "loss" in r.getMessage()]

    detailed, quiet = step_lines(True), step_lines(False)
    assert len(detailed) == 4 and all(" lr " in line for line in detailed)
    assert len(quiet) == 1 and quiet[0].startswith("step 4/4")


def test_the_gpu_precision_path_runs(prepared, tmp_path, small_config):
    """bf16 mixed precision as on a GPU (here CPU autocast): frozen UNet bf16, trained weights fp32."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from training import export

    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton
    try:
        state = loop.setup(small_config(max_train_steps=2), prepared,
                           accelerator=Accelerator(mixed_precision="bf16", cpu=True))
        assert state.unet.conv_in.weight.dtype == torch.bfloat16
        trained = [p for p in state.unet.parameters() if p.requires_grad]
        assert trained and all(p.dtype == torch.float32 for p in trained)
        assert all(p.dtype == torch.float32 for p in state.tokens.parameters())
        history = loop.fit(state, tmp_path)
        assert all(torch.isfinite(torch.tensor(s.loss)) for s in history.steps)
        export.save_weights(tmp_path / "out", state)
        assert (tmp_path / "out" / "lora.safetensors").is_file()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
