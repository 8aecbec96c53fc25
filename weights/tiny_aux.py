"""Tiny BLIP, CLIPSeg and Swin2SR weight sets for the training-data preprocessing, generated deterministically.

Same model and processor classes as the production repos (Salesforce/blip-image-captioning-large,
CIDAS/clipseg-rd64-refined, caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr), small configs, seeded
random init, saved with ``save_pretrained`` (safetensors) so that ``from_pretrained`` on the directory
works exactly as on the real repos. Tokenizers are built locally (no hub access): a small genuine
CLIP BPE for CLIPSeg (shared with the tiny SDXL text encoders) and a small uncased WordPiece vocabulary
for BLIP. The models produce meaningless captions, masks and upscales; they exist so every preprocessing
code path runs offline.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from .tiny_sdxl import clip_tokenizer

# Image sizes of the tiny models (the real ones: BLIP 384, CLIPSeg 352, Swin2SR 64 with window 8).
BLIP_IMAGE_SIZE = 32
CLIPSEG_IMAGE_SIZE = 64
SWIN2SR_UPSCALE = 4

_BLIP_WORDS = (
    "a an the of and in on with at by for to is photo picture painting portrait drawing close up "
    "man woman person face dog cat toy monster sitting standing smiling window car office table "
    "red green blue yellow black white sky sea city forest mountain tok"
).split()
_BLIP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _blip_tokenizer():
    """An uncased BERT WordPiece tokenizer: specials, letters, digits, punctuation, a few dozen words, [DEC]."""
    from transformers import BertTokenizer

    pieces = list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    vocab = list(dict.fromkeys(_BLIP_SPECIALS + pieces + ["##" + c for c in string.ascii_lowercase] + _BLIP_WORDS))
    # BLIP's decoder starts from [DEC] (bos); the real tokenizer has it as an added special token too.
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=512)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def make_blip(out: Path, seed: int = 300) -> None:
    """BlipForConditionalGeneration + BlipProcessor, the layout of Salesforce/blip-image-captioning-large."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    tok = _blip_tokenizer()
    hidden = 32
    config = BlipConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "encoder_hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "projection_dim": hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "bos_token_id": tok.bos_token_id,
            "pad_token_id": tok.pad_token_id,
            "sep_token_id": tok.sep_token_id,
            "eos_token_id": tok.sep_token_id,
        },
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "projection_dim": hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": BLIP_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=hidden,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    model.generation_config.max_length = 20
    model.save_pretrained(out, safe_serialization=True)
    image_processor = BlipImageProcessorPil(size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE})
    BlipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out)


def make_clipseg(out: Path, seed: int = 400) -> None:
    """CLIPSegForImageSegmentation + CLIPSegProcessor, the layout of CIDAS/clipseg-rd64-refined."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessorPil

    tok = clip_tokenizer(pad_token="<|endoftext|>")
    hidden = 32
    config = CLIPSegConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": CLIPSEG_IMAGE_SIZE,
            "patch_size": 16,
        },
        projection_dim=hidden,
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        extract_layers=[1, 2],
        use_complex_transposed_convolution=True,  # as rd64-refined
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    image_processor = ViTImageProcessorPil(
        size={"height": CLIPSEG_IMAGE_SIZE, "width": CLIPSEG_IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out)


def make_swin2sr(out: Path, seed: int = 500) -> None:
    """Swin2SRForImageSuperResolution (x4, nearest+conv) + Swin2SRImageProcessor, the real-world x4 layout."""
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution, Swin2SRImageProcessorPil

    config = Swin2SRConfig(
        image_size=16,
        patch_size=1,
        num_channels=3,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
        mlp_ratio=2.0,
        upscale=SWIN2SR_UPSCALE,
        img_range=1.0,
        upsampler="nearest+conv",
        resi_connection="1conv",
    )
    torch.manual_seed(seed)
    model = Swin2SRForImageSuperResolution(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    Swin2SRImageProcessorPil(do_rescale=True, rescale_factor=1 / 255, do_pad=True, size_divisor=4).save_pretrained(out)
