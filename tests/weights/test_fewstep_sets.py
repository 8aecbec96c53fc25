"""The few-step weight sets fetch only the files they need from Hugging Face and share SDXL base's.

huggingface_hub is replaced by a fake holding each repo's real file list (as the Hub shows it) that applies
allow_patterns with huggingface_hub's own filter, so the test sees exactly which files a deployment downloads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

import weights

BASE, TURBO, FIX, LIGHTNING = ("stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/sdxl-turbo",
                               "madebyollin/sdxl-vae-fp16-fix", "ByteDance/SDXL-Lightning")
PIPELINE = ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors",
            "unet/model.onnx", "unet/openvino_model.bin", "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors", "text_encoder/model.safetensors", "text_encoder/model.onnx",
            "text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors", "tokenizer/merges.txt",
            "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/vocab.json", "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors", "vae_decoder/model.onnx", "README.md"]
REPOS = {
    BASE: PIPELINE + ["sd_xl_base_1.0.safetensors", "sd_xl_offset_example-lora_1.0.safetensors"],
    TURBO: PIPELINE + ["sd_xl_turbo_1.0.safetensors", "sd_xl_turbo_1.0_fp16.safetensors"],
    FIX: ["config.json", "diffusion_pytorch_model.safetensors", "README.md"],
    LIGHTNING: [f"sdxl_lightning_{n}step{kind}.safetensors" for n in (2, 4, 8) for kind in ("", "_unet", "_lora")],
}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake huggingface_hub; returns {repo: set of the files downloaded}."""
    import huggingface_hub

    fetched: dict[str, set[str]] = {}

    def place(repo: str, files) -> Path:
        root = tmp_path / "hub" / repo.replace("/", "--")
        for name in files:
            assert name in REPOS[repo], (repo, name)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).touch()
            fetched.setdefault(repo, set()).add(name)
        return root

    def snapshot_download(repo, allow_patterns=None, **_):
        return str(place(repo, filter_repo_objects(REPOS[repo], allow_patterns=allow_patterns)))

    def hf_hub_download(repo, filename, **_):
        return str(place(repo, [filename]) / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setenv("SDXL_WEIGHTS", "huggingface")
    monkeypatch.setenv("SDXL_WEIGHTS_DIR", str(tmp_path / "w"))
    return fetched


SHARED_FROM_BASE = {"text_encoder/config.json", "text_encoder/model.fp16.safetensors", "text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors", "tokenizer/merges.txt",
                    "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/vocab.json"}


def test_turbo_fetches_its_unet_and_scheduler_and_takes_the_rest_from_sdxl_base(hub):
    got = weights.resolve("sdxl-turbo")
    assert hub[TURBO] == {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                          "unet/diffusion_pytorch_model.fp16.safetensors"}
    assert hub[BASE] == SHARED_FROM_BASE
    assert hub[FIX] == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert (got / "unet").resolve().parent.name == TURBO.replace("/", "--")
    assert (got / "text_encoder").resolve().parent.name == BASE.replace("/", "--")
    assert (got / "vae").resolve().name == FIX.replace("/", "--")
    assert weights.source("sdxl-turbo").startswith(f"huggingface {TURBO} + text_encoder from {BASE}/text_encoder")


@pytest.mark.parametrize("steps", [4, 8])
def test_lightning_fetches_one_unet_file_and_sdxl_base_configs(hub, steps):
    got = weights.resolve(f"sdxl-lightning-{steps}step")
    assert hub[LIGHTNING] == {f"sdxl_lightning_{steps}step_unet.safetensors"}
    assert hub[BASE] == SHARED_FROM_BASE | {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json"}
    assert (got / f"sdxl_lightning_{steps}step_unet.safetensors").is_file()
    assert (got / "unet" / "config.json").is_file() and (got / "vae" / "config.json").is_file()


def test_the_replicate_source_of_a_set_without_a_tar_is_hugging_face(monkeypatch):
    monkeypatch.delenv("SDXL_WEIGHTS")
    assert weights.source("sdxl-lightning-4step").endswith(f"+ sdxl_lightning_4step_unet.safetensors from {LIGHTNING}")


def test_a_folder_without_safetensors_fetches_no_other_folders_weights(hub, monkeypatch):
    """Tokenizers first (nothing to fetch as safetensors): the .bin fallback stays inside the tokenizer folders."""
    import dataclasses

    from weights import sets

    ws = sets.WEIGHT_SETS["sdxl-turbo"]
    tokenizers_first = dict(sorted(ws.hf_overlays.items(), key=lambda item: not item[0].startswith("tokenizer")))
    monkeypatch.setitem(sets.WEIGHT_SETS, "sdxl-turbo", dataclasses.replace(ws, hf_overlays=tokenizers_first))
    weights.resolve("sdxl-turbo")
    assert not any(name.endswith(".bin") for files in hub.values() for name in files)
    assert hub[BASE] == SHARED_FROM_BASE
