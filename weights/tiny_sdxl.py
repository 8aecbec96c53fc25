"""Tiny SDXL-architecture weight sets, generated deterministically.

Same classes as the real SDXL (two CLIP text encoders and tokenizers, a UNet with
``text_time`` conditioning, a refiner UNet with aesthetic-score conditioning, the VAE,
the safety checker), small configs, seeded random init, saved in the on-disk layout of
the production tars (fp16 ``variant`` safetensors files) so the production loaders read
them unchanged. Tiny weights make noise, not pictures: they exist so that every code path
runs offline and can be compared against plain diffusers on the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Dimensions differ on purpose (32 vs 64) so that mixing the two encoders up fails loudly.
TEXT_ENCODER_DIM = 32
TEXT_ENCODER_2_DIM = 64
TIME_EMBED_DIM = 8

# Words that get whole-word BPE merges; anything else tokenizes into characters.
_WORDS = (
    "a an the of and in on with at by for to photo picture painting portrait drawing "
    "astronaut riding rainbow unicorn dog cat person man woman face toy monster tok "
    "red green blue yellow black white sky sea city forest mountain style art high quality"
).split()

SCHEDULER_CONFIG = {  # the scheduler config of stabilityai/stable-diffusion-xl-base-1.0
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small but genuine CLIP BPE vocabulary: all bytes, plus whole-word merges for _WORDS."""
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merged = symbols[0] + symbols[1]
            rule = (symbols[0], symbols[1])
            if rule not in merges:
                merges.append(rule)
                vocab.append(merged)
            symbols = [merged] + symbols[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def clip_tokenizer(pad_token: str):
    """The tiny CLIP tokenizer (a small real BPE vocabulary), as every tiny text model uses it."""
    from transformers import CLIPTokenizer

    vocab, merges = _bpe()
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def _save_tokenizer(tokenizer, path: Path) -> None:
    """The tokenizer as transformers saves it (tokenizer.json) plus the vocab.json and merges.txt that
    slow tokenizers, older transformers and other tools read."""
    tokenizer.save_pretrained(path)
    vocab, merges = _bpe()
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def _save_text_encoder(model, path: Path) -> None:
    """A CLIPTextModel as :func:`_save`, with every key under ``text_model.`` as older transformers and other
    tools expect (transformers 5 saves it without the prefix; they would load a randomly initialised encoder).
    CLIPTextModelWithProjection is saved with the prefix already (and its ``text_projection`` outside it)."""
    from safetensors.torch import load_file, save_file

    _save(model, path)
    for f in path.glob("*.safetensors"):
        state = load_file(f)
        save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, f,
                  metadata={"format": "pt"})


def _text_config(tokenizer, hidden: int, act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _unet(cross_attention_dim: int, time_ids: int, refiner: bool):
    from diffusers import UNet2DConditionModel

    if refiner:  # the refiner's block layout: attention in the middle two of four blocks
        blocks = dict(
            block_out_channels=(32, 32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 2, 4, 4),
            transformer_layers_per_block=1,
        )
    else:  # the base's layout: no attention in the first block, more layers deeper down
        blocks = dict(
            block_out_channels=(32, 32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 2, 4),
            transformer_layers_per_block=(1, 1, 2),
        )
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=time_ids * TIME_EMBED_DIM + TEXT_ENCODER_2_DIM,
        **blocks,
    )


def _vae():
    from diffusers import AutoencoderKL

    # Four blocks: the same 8x spatial factor as the real SDXL VAE.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.13025,
        force_upcast=False,
    )


def _save_scheduler(out: Path) -> None:
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))


def _save_model_index(out: Path, components: dict[str, list]) -> None:
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0"}
    index.update(components)
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def _save(model, path: Path) -> None:
    model.to(torch.float16).save_pretrained(path, variant="fp16", safe_serialization=True)


def make_base(out: Path, seed: int = 0) -> None:
    """SDXL base (the fp16-fix VAE layout: force_upcast off) as in sdxl-vae-upcast-fix.tar."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = clip_tokenizer(pad_token="<|endoftext|>")
    tok2 = clip_tokenizer(pad_token="!")
    _save_tokenizer(tok, out / "tokenizer")
    _save_tokenizer(tok2, out / "tokenizer_2")
    torch.manual_seed(seed)
    _save_text_encoder(CLIPTextModel(_text_config(tok, TEXT_ENCODER_DIM, "quick_gelu")), out / "text_encoder")
    torch.manual_seed(seed + 1)
    _save(CLIPTextModelWithProjection(_text_config(tok2, TEXT_ENCODER_2_DIM, "gelu")), out / "text_encoder_2")
    torch.manual_seed(seed + 2)
    _save(_unet(TEXT_ENCODER_DIM + TEXT_ENCODER_2_DIM, time_ids=6, refiner=False), out / "unet")
    torch.manual_seed(seed + 3)
    _save(_vae(), out / "vae")
    _save_scheduler(out)
    _save_model_index(
        out,
        {
            "force_zeros_for_empty_prompt": True,
            "add_watermarker": None,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )


def make_refiner(out: Path, seed: int = 100) -> None:
    """SDXL refiner without VAE and text encoder, as in refiner-no-vae-no-encoder-1.0.tar."""
    _save_tokenizer(clip_tokenizer(pad_token="!"), out / "tokenizer_2")
    torch.manual_seed(seed)
    _save(_unet(TEXT_ENCODER_2_DIM, time_ids=5, refiner=True), out / "unet")
    _save_scheduler(out)
    index = {
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "_diffusers_version": "0.19.0.dev0",
        "force_zeros_for_empty_prompt": False,
        "requires_aesthetics_score": True,
        "add_watermarker": None,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": [None, None],
        "text_encoder_2": [None, None],
        "tokenizer": [None, None],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


SAFETY_IMAGE_SIZE = 32


def make_safety(out: Path, seed: int = 200) -> None:
    """Safety checker + its CLIP feature extractor, as in safety-1.0.tar (plus preprocessor_config.json).

    The concept thresholds keep their class defaults (1.0), which a cosine similarity never
    exceeds: this checker flags nothing. Tests make a flag-everything variant by lowering them.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": SAFETY_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    torch.manual_seed(seed)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
    checker.save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": SAFETY_IMAGE_SIZE}, crop_size={"height": SAFETY_IMAGE_SIZE, "width": SAFETY_IMAGE_SIZE}
    ).save_pretrained(out)
