"""Where the trainer follows the reference (replicate/cog-sdxl trainer_pti.py) beyond its core: the new
tokens' spread is renormalised every step, the weight variant is detected, warmup only where a schedule has one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training import loop
from training.tokens import RENORM_POWER, PivotalTokens


def make_tokens(base_dir) -> PivotalTokens:
    tokenizers = [CLIPTokenizer.from_pretrained(base_dir, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    load = dict(variant="fp16", torch_dtype=torch.float32)
    encoders = [CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder", **load),
                CLIPTextModelWithProjection.from_pretrained(base_dir, subfolder="text_encoder_2", **load)]
    return PivotalTokens(tokenizers, encoders, "TOK", 2, generator=torch.Generator().manual_seed(0))


def test_inflated_new_rows_are_pulled_toward_the_vocabulary_spread(base_dir):
    """The reference's retract_embeddings: new rows *= (vocabulary std / their std) ** 0.1; others untouched."""
    tokens = make_tokens(base_dir)
    tokens.start_training()
    before = []
    with torch.no_grad():
        for weight, ids in zip(tokens.parameters(), tokens.ids):
            weight[ids] *= 10  # as a few large ti_lr steps would
            before.append(weight.detach().clone())
    tokens.renormalize_new_rows()
    for weight, ids, frozen, old in zip(tokens.parameters(), tokens.ids, tokens.frozen_rows, before):
        vocab_std = old[frozen].std()
        expected = old[ids] * (vocab_std / old[ids].std()) ** RENORM_POWER
        torch.testing.assert_close(weight[ids], expected)
        assert weight[ids].std() < old[ids].std()
        assert torch.equal(weight[frozen], old[frozen])
    tokens.stop_training()  # after the pivot the embeddings are constants
    frozen_now = [w.detach().clone() for w in tokens.parameters()]
    tokens.renormalize_new_rows()
    assert all(torch.equal(a, b) for a, b in zip(frozen_now, tokens.parameters()))


def test_every_embedding_step_renormalises_after_restoring_the_frozen_rows(prepared, tmp_path, small_config,
                                                                             monkeypatch):
    calls = []
    restore, renorm = PivotalTokens.restore_frozen_rows, PivotalTokens.renormalize_new_rows
    monkeypatch.setattr(PivotalTokens, "restore_frozen_rows",
                        lambda self: (calls.append("restore"), restore(self))[1])
    monkeypatch.setattr(PivotalTokens, "renormalize_new_rows",
                        lambda self: (calls.append(f"renorm training={self.training}"), renorm(self))[1])
    state = loop.setup(small_config(max_train_steps=4), prepared)
    history = loop.fit(state, tmp_path)
    assert history.pivot_step == 2
    assert calls == ["restore", "renorm training=True"] * 2 + ["restore", "renorm training=False"] * 2


def _relayout(src: Path, dst: Path, keep_variant: set[str]) -> Path:
    """A copy of the weights with the ``.fp16`` variant names only in ``keep_variant`` folders (symlinked files)."""
    for path in src.rglob("*"):
        if path.is_file():
            rel = path.relative_to(src)
            name = rel.name if rel.parts[0] in keep_variant else rel.name.replace(".fp16.", ".")
            target = dst / rel.parent / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
    return dst


@pytest.mark.parametrize("keep_variant", [set(), {"unet", "text_encoder", "text_encoder_2"}],
                         ids=["huggingface layout (no variant)", "fp16 files with the fp16-fix VAE (no variant)"])
def test_training_loads_weights_without_the_fp16_variant(prepared, tmp_path, small_config, base_dir, keep_variant):
    base = _relayout(Path(base_dir), tmp_path / "weights", keep_variant)
    state = loop.setup(small_config(max_train_steps=1), prepared, base_dir=base)
    assert len(loop.fit(state, tmp_path / "work").steps) == 1
    assert loop.variant_in(base, "vae") is None
    assert loop.variant_in(base, "unet") == ("fp16" if keep_variant else None)
    assert loop.variant_in(Path(base_dir), "unet") == "fp16"  # the production layout


def test_constant_schedule_has_no_warmup_and_linear_has(prepared, tmp_path, small_config):
    """lr_warmup_steps is documented for "lr schedulers with warmups": constant is constant from step 1
    (as the reference, whose get_scheduler("constant") ignores warmup), linear ramps up then decays."""
    lr = 1e-3
    state = loop.setup(small_config(max_train_steps=5, lr_warmup_steps=3, lora_lr=lr), prepared)
    constant = loop.fit(state, tmp_path)
    assert [s.lr_unet for s in constant.steps] == pytest.approx([lr] * 5)
    state = loop.setup(small_config(max_train_steps=5, lr_warmup_steps=3, lora_lr=lr, lr_scheduler="linear"),
                       prepared)
    linear = loop.fit(state, tmp_path)
    assert [s.lr_unet for s in linear.steps][:4] == pytest.approx([0, lr / 3, 2 * lr / 3, lr])
