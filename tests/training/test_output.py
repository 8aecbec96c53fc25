"""The outputs: a lean weights tar in the reference format, checkpoints and dataset beside it, validation
images, determinism, atomic writing."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, load_file

from training import train_on_prepared

LORA_KEY = re.compile(r"^(down|mid|up)_block[s]?\.[\w.]+\.attn[12]\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def lora_result(prepared, tmp_path_factory, small_config):
    return train_on_prepared(prepared, small_config(max_train_steps=5, checkpointing_steps=2),
                             tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def lora_tar(lora_result):
    return lora_result.weights


def test_tar_layout_in_the_reference_format(lora_result, prepared):
    files = members(lora_result.weights)
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in files)
    weights = {"lora.safetensors", "embeddings.pti", "special_params.json"}
    # the reference files, the universal LoRA, the embedding, the README: nothing else
    assert files.keys() == weights | {"tok.safetensors", "tok_emb.safetensors", "README.txt"}
    # a checkpoint every checkpointing_steps=2 (the final weights are the weights tar), in their own tar
    checkpoint_files = members(lora_result.checkpoints)
    checkpoints = sorted({n.split("/")[1] for n in checkpoint_files})
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    for c in checkpoints:
        assert {n.rsplit("/", 1)[1] for n in checkpoint_files if n.startswith(f"checkpoints/{c}/")} == weights
    assert checkpoint_files["checkpoints/checkpoint-2/lora.safetensors"] != files["lora.safetensors"]
    # the prepared dataset, in its own tar
    dataset = members(lora_result.dataset)
    for p in ("captions.csv", "images/0000.png", "images/0001.png", "masks/0000.png", "masks/0001.png"):
        assert dataset[f"dataset/{p}"] == (prepared / p).read_bytes()

    assert json.loads(files["special_params.json"]) == {"TOK": "<s0><s1>"}
    emb = load(files["embeddings.pti"])
    assert set(emb) == {"text_encoders_0", "text_encoders_1"}
    assert list(emb["text_encoders_0"].shape) == [2, 32] and list(emb["text_encoders_1"].shape) == [2, 64]
    lora = load(files["lora.safetensors"])
    bad = [k for k in lora if not LORA_KEY.match(k)]
    assert lora and not bad, bad[:3]
    q_down = lora["down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"]
    q_up = lora["down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight"]
    assert list(q_down.shape) == [4, 32] and list(q_up.shape) == [32, 4]  # [rank, in], [out, rank]
    assert not any("alpha" in k for k in lora)


def test_same_seed_same_weights(lora_result, prepared, tmp_path, small_config):
    again = train_on_prepared(prepared, small_config(max_train_steps=5, checkpointing_steps=2),
                              tmp_path / "again", tmp_path / "work", validation_images=0)
    other = train_on_prepared(prepared, small_config(max_train_steps=5, checkpointing_steps=2, seed=1),
                              tmp_path / "other", tmp_path / "work2", validation_images=0)
    for tar in ("weights", "checkpoints"):
        a, b, c = (members(getattr(r, tar)) for r in (lora_result, again, other))
        for name in a:
            if name.endswith(("lora.safetensors", "embeddings.pti")):
                assert a[name] == b[name], name
                assert a[name] != c[name], name
    # the kohya file's metadata order varies (a hash map in safetensors): its tensors are compared
    tensors = [load(members(r.weights)["tok.safetensors"]) for r in (lora_result, again, other)]
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    assert not all(torch.equal(tensors[0][k], tensors[2][k]) for k in tensors[0])


def test_validation_images_are_the_predictors_images_of_the_tar(lora_result, small_config, tmp_path):
    """Two images at the training resolution, drawn with the trained weights and the caption prefix: the
    predictor's own engine given the weights tar with the same settings makes the same pixels."""
    from types import SimpleNamespace

    import weights
    from sdxl.finetune import FineTunes
    from sdxl.generate import Settings, generate
    from sdxl.models import Models, load_base

    from training import validate

    paths = lora_result.validation_images
    assert [p.name for p in paths] == ["validation-0.png", "validation-1.png"]
    images = [np.array(Image.open(p)) for p in paths]
    assert all(i.shape == (64, 64, 3) for i in images) and not np.array_equal(images[0], images[1])
    with tarfile.open(lora_result.weights) as tar:
        tar.extractall(tmp_path / "w", filter="data")
    pipe = load_base(weights.resolve("sdxl-base"), "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    models = Models("cpu", torch.float32, pipe, None, None, None, None, pipe.scheduler.config, {})
    finetunes = FineTunes(models)
    settings = dict(negative_prompt="", width=64, height=64, num_outputs=2, scheduler=validate.SCHEDULER,
                    num_inference_steps=validate.STEPS, guidance_scale=validate.GUIDANCE_SCALE, prompt_strength=0.8,
                    seed=validate.SEED, refine="no_refiner", high_noise_frac=0.8, refine_steps=None,
                    apply_watermark=False, lora_scale=validate.LORA_SCALE)
    base = [np.array(i) for i in generate(models, Settings(prompt="a photo of TOK", **settings))]
    finetunes.apply(finetunes.read(tmp_path / "w", input_name="weights", source="tar"))
    prompt = finetunes.rewrite_prompt(small_config().caption_prefix)
    assert prompt == "a photo of <s0><s1>"
    tuned = [np.array(i) for i in generate(models, Settings(prompt=prompt, **settings), lora=True)]
    for ours, theirs, untrained in zip(images, tuned, base):
        np.testing.assert_array_equal(ours, theirs)
        assert not np.array_equal(ours, untrained)


def test_full_finetune_writes_unet_safetensors(prepared, tmp_path, small_config, base_dir):
    out = train_on_prepared(prepared, small_config(is_lora=False, max_train_steps=1), tmp_path / "full",
                            tmp_path / "work", validation_images=1)
    files = members(out.weights)
    assert out.checkpoints is None and len(out.validation_images) == 1
    assert "unet.safetensors" in files and "lora.safetensors" not in files
    unet = load(files["unet.safetensors"])
    base = load_file(base_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert unet.keys() == base.keys()
    assert all(unet[k].shape == base[k].shape for k in base)


def test_failure_leaves_no_tar(prepared, tmp_path, small_config):
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    (broken / "images" / "0001.png").write_bytes(b"not a png")
    out_dir = tmp_path / "out"
    with pytest.raises(Exception):
        train_on_prepared(broken, small_config(max_train_steps=1), out_dir, tmp_path / "work")
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_tar_is_written_atomically(tmp_path, monkeypatch):
    from training import export

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    target = tmp_path / "out" / "weights.tar"
    export.write_tar(src, target)
    assert sorted(members(target)) == ["a.txt", "sub/b.txt"]
    before = target.read_bytes()

    real_add = tarfile.TarFile.add

    def fail_on_second(self, name, *args, **kwargs):
        if Path(name).name == "b.txt":
            raise OSError("disk full")
        return real_add(self, name, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "add", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        export.write_tar(src, target)
    assert target.read_bytes() == before  # the old tar is untouched, nothing half-written beside it
    assert sorted(p.name for p in target.parent.iterdir()) == ["weights.tar"]


def test_weights_tar_is_at_most_1_6_times_the_references(prepared, tmp_path, small_config):
    """The reference's tar holds lora.safetensors (fp32), embeddings.pti and special_params.json; ours adds
    the fp16 universal LoRA (half the LoRA's bytes), the SDXL embedding and a README. At the default rank
    (32; 1.52x here): at tiny width a rank-4 tensor is no larger than its safetensors header entry (1.65x),
    which no real LoRA is."""
    from training.inputs import LORA_RANK

    out = train_on_prepared(prepared, small_config(max_train_steps=1, lora_rank=LORA_RANK), tmp_path / "out",
                            tmp_path / "work", validation_images=0)
    files = members(out.weights)
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ("lora.safetensors", "embeddings.pti", "special_params.json"):
        (reference / name).write_bytes(files[name])
    reference_tar = tmp_path / "reference.tar"
    with tarfile.open(reference_tar, "w") as tar:
        for f in sorted(reference.iterdir()):
            tar.add(f, arcname=f.name)
    ratio = out.weights.stat().st_size / reference_tar.stat().st_size
    assert ratio <= 1.6, ratio
    assert load(files["tok.safetensors"])[
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"].dtype == torch.float16
