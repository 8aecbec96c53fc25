"""Data parallel through accelerate: two processes (a gloo group on the CPU, as two GPUs would be an NCCL
one) with batch 1 each train the same weights as one process with batch 2 - same seed, same global batch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from training import distributed
from training.run import train_and_save

# Two processes average their shards' gradients (gloo's all-reduce) where one process averages the whole
# batch: the same sums in another order, float32 rounding apart. AdamW's first steps divide each gradient
# by its own magnitude, so where a gradient element is ~0 that rounding moves the update by up to a few
# percent of one step (lr): measured 2.9e-5 at lora_lr 1e-3; without the shard weighting of the 1 + 0 batch
# (step 2) the difference is 3.4e-4 after it and grows by whole steps.
STEP_FRACTION = 0.05


def test_two_processes_train_the_weights_of_one_with_the_global_batch(tmp_path, small_config, base_dir,
                                                                      monkeypatch):
    pytest.importorskip("torch.distributed")
    assert torch.distributed.is_gloo_available()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on a shared machine
    prepared = _prepared(tmp_path)  # 3 images, global batch 2: the second batch splits 1 + 0
    steps = dict(max_train_steps=2, checkpointing_steps=1)
    train_and_save(prepared, small_config(train_batch_size=2, **steps).with_seed(), tmp_path / "one", base_dir)
    distributed.launch(train_and_save, (prepared, small_config(train_batch_size=1, **steps).with_seed(),
                                        tmp_path / "two", base_dir), 2, cpu=True)
    cfg = small_config()
    for name, lr in (("weights/lora.safetensors", cfg.lora_lr), ("checkpoints/checkpoint-1/lora.safetensors", cfg.lora_lr),
                     ("weights/embeddings.pti", cfg.ti_lr)):
        one, two = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        assert one.keys() == two.keys()
        worst = max((one[k] - two[k]).abs().max().item() for k in one)
        assert worst <= STEP_FRACTION * lr, (name, worst)
    # and it trained: the LoRA moved away from its initialisation in both
    assert any(v.abs().max() > 0 for k, v in load_file(tmp_path / "two" / "weights/lora.safetensors").items()
               if k.endswith("up.weight"))


def _prepared(tmp_path):
    import csv

    import numpy as np
    from PIL import Image

    root = tmp_path / "prepared"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(3):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "mask": "", "caption": f"a photo of TOK {i}"})
    with open(root / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "mask", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return root
