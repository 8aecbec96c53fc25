"""Every schedule-related input has an effect: warmup, scheduler, pivot, max_train_steps vs epochs."""

from __future__ import annotations

import pytest
import torch

from training import loop


def fit(prepared, tmp_path, small_config, save_checkpoint=None, **overrides):
    state = loop.setup(small_config(**overrides), prepared)
    return state, loop.fit(state, tmp_path, save_checkpoint=save_checkpoint)


def test_linear_scheduler_decays_to_zero(prepared, tmp_path, small_config):
    lr = 1e-3
    _, h = fit(prepared, tmp_path, small_config, max_train_steps=6, lr_warmup_steps=2, lr_scheduler="linear", lora_lr=lr)
    assert [s.lr_unet for s in h.steps] == pytest.approx([0, lr / 2, lr, 0.75 * lr, 0.5 * lr, 0.25 * lr])


def test_pivot_stops_embeddings_halfway_and_keeps_the_schedule(prepared, tmp_path, small_config):
    seen = []

    def record(path, state):  # called after every step (checkpointing_steps=1)
        rows = state.tokens.new_rows()
        lora = {k: v.detach().clone() for k, v in state.unet.named_parameters() if "lora_" in k}
        seen.append((rows, lora))

    lr = 1e-3
    _, h = fit(prepared, tmp_path, small_config, record, max_train_steps=7, checkpointing_steps=1,
               lr_scheduler="linear", lora_lr=lr)
    assert h.pivot_step == 3
    assert [s.lr_ti > 0 for s in h.steps] == [True, True, True, False, False, False, False]
    # the UNet group's linear decay is untouched by the pivot
    assert [s.lr_unet for s in h.steps] == pytest.approx([lr * (1 - i / 7) for i in range(7)])
    rows = [r for r, _ in seen]  # after steps 1..6 (no checkpoint at the last step)
    assert not torch.equal(rows[0]["text_encoders_0"], rows[1]["text_encoders_0"])
    assert not torch.equal(rows[1]["text_encoders_1"], rows[2]["text_encoders_1"])
    for later in rows[3:]:  # from step 3 on, frozen
        for key in ("text_encoders_0", "text_encoders_1"):
            assert torch.equal(later[key], rows[2][key])
    loras = [lo for _, lo in seen]
    assert any(not torch.equal(loras[4][k], loras[5][k]) for k in loras[4])  # the LoRA keeps training


@pytest.mark.parametrize(
    "max_steps, epochs, batch, expected",
    [
        (3, 100, 1, 3),  # max_train_steps wins over many epochs
        (5, 1, 2, 5),  # ... and over too few
        (0, 3, 1, 6),  # 0: num_train_epochs (3 epochs x 2 images / batch 1)
        (0, 2, 4, 2),  # a batch larger than the dataset is one step per epoch
    ],
)
def test_max_train_steps_takes_precedence(prepared, tmp_path, small_config, max_steps, epochs, batch, expected):
    _, h = fit(prepared, tmp_path, small_config, max_train_steps=max_steps, num_train_epochs=epochs,
               train_batch_size=batch)
    assert len(h.steps) == h.total_steps == expected
