"""The weights tar: reference format, checkpoints, dataset, determinism, atomic writing."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from safetensors.torch import load, load_file

from training import train_on_prepared

LORA_KEY = re.compile(r"^(down|mid|up)_block[s]?\.[\w.]+\.attn[12]\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def lora_tar(prepared, tmp_path_factory, small_config):
    out = tmp_path_factory.mktemp("out") / "weights.tar"
    return train_on_prepared(prepared, small_config(max_train_steps=5, checkpointing_steps=2), out,
                             tmp_path_factory.mktemp("work"))


def test_tar_layout_in_the_reference_format(lora_tar, prepared):
    files = members(lora_tar)
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in files)
    weights = {"lora.safetensors", "embeddings.pti", "special_params.json"}
    assert weights <= files.keys()
    assert "unet.safetensors" not in files
    # a checkpoint every checkpointing_steps=2 (the final weights are the top level), same files
    checkpoints = sorted({n.split("/")[1] for n in files if n.startswith("checkpoints/")})
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    for c in checkpoints:
        assert {n.rsplit("/", 1)[1] for n in files if n.startswith(f"checkpoints/{c}/")} == weights
    assert files["checkpoints/checkpoint-2/lora.safetensors"] != files["lora.safetensors"]
    # the prepared dataset
    for p in ("captions.csv", "images/0000.png", "images/0001.png", "masks/0000.png", "masks/0001.png"):
        assert files[f"dataset/{p}"] == (prepared / p).read_bytes()

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


def test_same_seed_same_weights(lora_tar, prepared, tmp_path, small_config):
    again = train_on_prepared(prepared, small_config(max_train_steps=5, checkpointing_steps=2),
                              tmp_path / "again.tar", tmp_path / "work")
    other = train_on_prepared(prepared, small_config(max_train_steps=5, checkpointing_steps=2, seed=1),
                              tmp_path / "other.tar", tmp_path / "work2")
    a, b, c = members(lora_tar), members(again), members(other)
    for name in ("lora.safetensors", "embeddings.pti", "checkpoints/checkpoint-2/lora.safetensors"):
        assert a[name] == b[name], name
        assert a[name] != c[name], name


def test_full_finetune_writes_unet_safetensors(prepared, tmp_path, small_config, base_dir):
    out = train_on_prepared(prepared, small_config(is_lora=False, max_train_steps=1), tmp_path / "full.tar",
                            tmp_path / "work")
    files = members(out)
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
        train_on_prepared(broken, small_config(max_train_steps=1), out_dir / "weights.tar", tmp_path / "work")
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
