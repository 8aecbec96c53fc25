"""The trainer's CUDA path: data preparation with the preprocess models on CUDA (BLIP, CLIPSeg, Swin2SR;
mediapipe beside them), set-up (bf16 frozen UNet, gradient checkpointing, new tokens, LoRA), a few
optimizer steps (LoRA and full fine-tune) and the export."""

from __future__ import annotations

import pytest
import torch
from devkit.media import encode, picture, zip_bytes

from device.standin import cpu_numbers, on_cuda
from preprocess import prepare
from training import TrainConfig, loop
from training.export import save_weights

RES = 32


def small_config(**overrides) -> TrainConfig:
    settings = dict(seed=0, resolution=RES, train_batch_size=2, max_train_steps=2, lora_rank=4, lr_warmup_steps=0,
                    checkpointing_steps=1000, verbose=False, lora_lr=1e-3, ti_lr=1e-2, unet_learning_rate=1e-4)
    return TrainConfig(**{**settings, **overrides})


def photos_zip(path, n=2, size=(24, 20)):
    """Pictures smaller than RES, so that Swin2SR upscales them."""
    path.write_bytes(zip_bytes([(f"{i}.png", encode(picture(size, seed=i))) for i in range(n)]))
    return path


@pytest.fixture(scope="module")
def prepared_on_cuda(tmp_path_factory):
    """``prepare`` with device="cuda": BLIP captions, CLIPSeg masks, Swin2SR upscaling on the GPU."""
    from device.standin import cuda_device

    tmp = tmp_path_factory.mktemp("cuda-prep")
    with cuda_device():
        return prepare(photos_zip(tmp / "in.zip"), tmp / "prepared", resolution=RES, mask_target_prompts="a toy",
                       seed=0, device="cuda")


def test_preprocess_models_run_on_cuda(prepared_on_cuda):
    rows = (prepared_on_cuda / "captions.csv").read_text().splitlines()
    assert len(rows) == 3 and all(r.count("a photo of TOK") == 1 for r in rows[1:])
    assert len(list((prepared_on_cuda / "masks").glob("*.png"))) == 2


def test_face_masks_with_a_gpu_present(tmp_path, cuda):
    pytest.importorskip("mediapipe")
    out = prepare(photos_zip(tmp_path / "in.zip", n=1, size=(40, 40)), tmp_path / "faces", resolution=RES,
                  use_face_detection_instead=True, seed=0, device="cuda")
    assert (out / "masks" / "0000.png").is_file()


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_training_steps_on_cuda(kind, prepared_on_cuda, base_dir, cuda, tmp_path):
    cfg = small_config(is_lora=kind == "lora")
    state = loop.setup(cfg, prepared_on_cuda, base_dir=base_dir)
    assert state.device.type == "cuda" and state.accelerator.mixed_precision == "bf16"
    assert all(on_cuda(p) for p in state.unet.parameters())
    assert all(on_cuda(t) for t in (state.data.latents, state.data.masks, state.data.time_ids))
    # the frozen weights of a LoRA run are bf16; whatever trains is fp32
    assert state.unet.dtype == (torch.bfloat16 if kind == "lora" else torch.float32)
    trained = {n: cpu_numbers(p) for n, p in state.unet.named_parameters() if p.requires_grad}
    assert trained and all(v.dtype == torch.float32 for v in trained.values())

    history = loop.fit(state, tmp_path)
    assert len(history.steps) == 2 and all(torch.isfinite(torch.tensor(s.loss)) for s in history.steps)
    after = {n: cpu_numbers(p) for n, p in state.unet.named_parameters() if n in trained}
    assert any(not torch.equal(trained[n], after[n]) for n in trained)  # the steps moved the weights

    out = save_weights(tmp_path / "out", state)
    assert (out / ("lora.safetensors" if kind == "lora" else "unet.safetensors")).is_file()
    assert (out / "embeddings.pti").is_file()
