"""It learns, and only what it should: LoRA and full fine-tune on the tiny SDXL, fixed evaluation."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.utils import convert_unet_state_dict_to_peft
from peft import LoraConfig, set_peft_model_state_dict
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from training import export, loop

LORA_STEPS, LORA_LR, LORA_MAX_RATIO = 20, 1e-2, 0.93  # loss after <= 93% of loss before
FULL_STEPS, FULL_LR, FULL_MAX_RATIO = 15, 5e-4, 0.80


def fresh_unet(base_dir):
    return UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet", variant="fp16", torch_dtype=torch.float32)


def run(prepared, tmp_path_factory, small_config, fixed_eval_loss, **overrides):
    state = loop.setup(small_config(**overrides), prepared)
    before = fixed_eval_loss(state)
    initial_rows = state.tokens.new_rows()
    history = loop.fit(state, tmp_path_factory.mktemp("work"))
    return state, before, fixed_eval_loss(state), initial_rows, history


@pytest.fixture(scope="module")
def lora_run(prepared, tmp_path_factory, small_config, fixed_eval_loss):
    return run(prepared, tmp_path_factory, small_config, fixed_eval_loss, is_lora=True, lora_lr=LORA_LR, max_train_steps=LORA_STEPS)


@pytest.fixture(scope="module")
def full_run(prepared, tmp_path_factory, small_config, fixed_eval_loss):
    return run(prepared, tmp_path_factory, small_config, fixed_eval_loss, is_lora=False, unet_learning_rate=FULL_LR, max_train_steps=FULL_STEPS)


def test_lora_learns(lora_run):
    state, before, after, _, history = lora_run
    assert len(history.steps) == LORA_STEPS
    assert after <= LORA_MAX_RATIO * before, (before, after)


def test_full_finetune_learns(full_run):
    state, before, after, _, history = full_run
    assert len(history.steps) == FULL_STEPS
    assert after <= FULL_MAX_RATIO * before, (before, after)


@pytest.mark.parametrize("which", ["lora_run", "full_run"])
def test_only_the_new_embedding_rows_change(which, request, base_dir):
    state, _, _, initial_rows, _ = request.getfixturevalue(which)
    final_rows = state.tokens.new_rows()
    originals = [
        CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder", variant="fp16", torch_dtype=torch.float32),
        CLIPTextModelWithProjection.from_pretrained(base_dir, subfolder="text_encoder_2", variant="fp16",
                                                    torch_dtype=torch.float32),
    ]
    for i, (encoder, original) in enumerate(zip(state.text_encoders, originals)):
        trained = encoder.get_input_embeddings().weight.detach()
        base = original.get_input_embeddings().weight.detach()
        assert trained.shape[0] == base.shape[0] + 2
        assert torch.equal(trained[: base.shape[0]], base), f"encoder {i}: an old token row changed"
        assert not torch.allclose(final_rows[f"text_encoders_{i}"], initial_rows[f"text_encoders_{i}"])
        assert torch.equal(trained[state.tokens.ids[i]], final_rows[f"text_encoders_{i}"])
        # the rest of the encoder is frozen too
        for (name, p), (_, q) in zip(encoder.named_parameters(), original.named_parameters()):
            if "token_embedding" not in name:
                assert torch.equal(p, q), name


def test_lora_leaves_the_base_unet_alone(lora_run, base_dir):
    state = lora_run[0]
    base = fresh_unet(base_dir).state_dict()
    trained = {k.replace(".base_layer", ""): v for k, v in state.unet.state_dict().items() if "lora_" not in k}
    assert trained.keys() == base.keys()
    assert all(torch.equal(trained[k], base[k]) for k in base)


def test_full_finetune_updates_the_unet(full_run, base_dir):
    state = full_run[0]
    base = fresh_unet(base_dir).state_dict()
    trained = state.unet.state_dict()
    assert trained.keys() == base.keys()
    changed = [k for k in base if not torch.equal(trained[k], base[k])]
    assert len(changed) >= 0.9 * len(base), f"only {len(changed)}/{len(base)} tensors changed"
    assert any("attn1.to_q" in k for k in changed) and any("conv_in" in k for k in changed)


def test_exported_legacy_lora_reproduces_the_trained_unet(lora_run, base_dir):
    """lora.safetensors -> convert_unet_state_dict_to_peft -> fresh UNet + peft: the same output."""
    state = lora_run[0]
    legacy = export.legacy_lora_state_dict(state.unet)
    pattern = re.compile(r"^.+\.attn[12]\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
    assert legacy and all(pattern.match(k) for k in legacy), next(k for k in legacy if not pattern.match(k))
    rank = state.cfg.lora_rank
    for key, value in legacy.items():
        assert value.shape[0 if ".down." in key else 1] == rank
    # every attention processor of the UNet has all four projections
    assert {k.split(".processor.")[0] + ".processor" for k in legacy} == set(state.unet.attn_processors)

    fresh = fresh_unet(base_dir)
    fresh.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=loop.LORA_TARGET_MODULES))
    result = set_peft_model_state_dict(fresh, convert_unet_state_dict_to_peft(legacy))
    assert not getattr(result, "unexpected_keys", [])
    assert not [k for k in getattr(result, "missing_keys", []) if "lora_" in k]

    g = torch.Generator().manual_seed(5)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    hidden = torch.randn(2, 77, 96, generator=g)
    cond = {"text_embeds": torch.randn(2, 64, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    t = torch.tensor([10, 500])
    state.unet.eval()
    fresh.eval()
    with torch.no_grad():
        expected = state.unet(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=cond).sample
        got = fresh(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=cond).sample
        fresh.disable_adapters()
        without = fresh(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=cond).sample
    assert (expected - without).abs().max() > 1e-3  # the LoRA does something...
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # ...and the export carries it exactly


def test_legacy_lora_means_weight_plus_up_times_down(lora_run, base_dir):
    """The reference loader's semantics, with no converter: W' = W + up @ down (no alpha, scale 1)."""
    state = lora_run[0]
    legacy = export.legacy_lora_state_dict(state.unet)
    merged = fresh_unet(base_dir)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for key, down in legacy.items():
            if ".down." not in key:
                continue
            processor, proj = re.match(r"^(.+)\.processor\.to_(q|k|v|out)_lora\.down\.weight$", key).groups()
            linear = modules[f"{processor}.to_{proj}" + (".0" if proj == "out" else "")]
            linear.weight += legacy[key.replace(".down.", ".up.")] @ down
    g = torch.Generator().manual_seed(6)
    sample, hidden = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 96, generator=g)
    cond = {"text_embeds": torch.randn(1, 64, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    state.unet.eval()
    with torch.no_grad():
        expected = state.unet(sample, torch.tensor([300]), encoder_hidden_states=hidden, added_cond_kwargs=cond).sample
        got = merged(sample, torch.tensor([300]), encoder_hidden_states=hidden, added_cond_kwargs=cond).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_snr_gamma_weighs_each_sample_by_min_snr_over_snr(prepared, small_config):
    """Min-SNR-gamma (diffusers' compute_snr): the loss of a sample at timestep t is its plain loss times
    min(SNR(t), gamma) / SNR(t); None keeps the plain loss."""
    from diffusers.training_utils import compute_snr

    from training import loop

    plain = loop.setup(small_config(), prepared)
    weighted = loop.setup(small_config(snr_gamma=5.0), prepared)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn((1, *plain.data.latents.shape[1:]), generator=g)
    with torch.no_grad():
        for t in (10, 500, 990):  # SNR above gamma (weighted down), then below (weight 1)
            timesteps = torch.tensor([t])
            snr = compute_snr(plain.noise_scheduler, timesteps)
            a = loop.loss_on(plain, torch.tensor([0]), noise, timesteps)
            b = loop.loss_on(weighted, torch.tensor([0]), noise, timesteps)
            torch.testing.assert_close(b, a * torch.clamp(snr, max=5.0)[0] / snr[0])
            assert (b < a) == bool(snr[0] > 5.0)


def test_noise_offset_adds_a_per_channel_constant_to_the_noise(prepared, tmp_path, small_config, monkeypatch):
    from training import loop

    seen = {}
    real = loop.loss_on

    def spy(state, indices, noise, timesteps):
        seen.setdefault(state.cfg.noise_offset, []).append((noise.clone(), timesteps.clone()))
        return real(state, indices, noise, timesteps)

    monkeypatch.setattr(loop, "loss_on", spy)
    for offset in (0.0, 0.1):
        state = loop.setup(small_config(max_train_steps=1, noise_offset=offset), prepared)
        loop.fit(state, tmp_path)
    (plain, t0), (shifted, t1) = seen[0.0][0], seen[0.1][0]
    assert torch.equal(t0, t1)  # the same draws otherwise: only the offset was added
    diff = shifted - plain
    per_channel = diff[:, :, :1, :1]
    torch.testing.assert_close(diff, per_channel.expand_as(diff))  # constant over each channel's pixels
    assert 0 < per_channel.abs().max() < 0.5 and per_channel.std() > 0.01  # 0.1 x a standard normal draw
