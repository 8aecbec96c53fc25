"""Training through coglet (``/trainings``), then predicting with the result (COG_WEIGHTS and replicate_weights)."""

import base64
import io
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cogrun import REPO_ROOT
from cogrun.serve import health, running_server

pytestmark = pytest.mark.skipif(not (REPO_ROOT / "train.py").exists(), reason="train.py is not written yet")

TINY_ENV = {**os.environ, "SDXL_WEIGHTS": "tiny"}
QUICK_TRAINING = {"resolution": 64, "max_train_steps": 2, "train_batch_size": 1, "lr_warmup_steps": 0,
                  "checkpointing_steps": 1000, "seed": 1}  # fmt: skip


def photos_zip() -> bytes:
    """Three small, distinct pictures (the trainer captions, masks and crops them itself)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(3):
            image = Image.new("RGB", (96, 80), (40 + 60 * i, 120, 200 - 50 * i))
            image.paste((250, 250, 250), (20 + 8 * i, 20, 60, 60))
            png = io.BytesIO()
            image.save(png, format="PNG")
            archive.writestr(f"photo{i}.png", png.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory) -> Path:
    """The train server's TMPDIR: where its outputs live until delivered."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def train_api(make_api, server_tmp):
    with running_server("train", env={**TINY_ENV, "TMPDIR": str(server_tmp)}, timeout=300) as base_url:
        yield make_api(base_url)


def _bytes(data_uri: str) -> bytes:
    header, _, payload = data_uri.partition(",")
    assert header.startswith("data:") and header.endswith(";base64")
    return base64.b64decode(payload)


def _outputs(server_tmp: Path) -> list[str]:
    return sorted(p.name for p in server_tmp.iterdir() if p.name.startswith("sdxl-weights-"))


@pytest.fixture(scope="module")
def trained(train_api, tmp_path_factory) -> dict:
    """The output of a two-step LoRA training on the train server (with one checkpoint)."""
    zip_uri = train_api.data_uri(photos_zip(), "application/zip")
    status, body = train_api.post({"input_images": zip_uri, **QUICK_TRAINING, "checkpointing_steps": 1},
                                  endpoint="/trainings")
    assert status == 200, body
    assert body["status"] == "succeeded", body.get("error")
    return body["output"]


@pytest.fixture(scope="module")
def trained_tar(trained, tmp_path_factory) -> Path:
    tar = tmp_path_factory.mktemp("trained") / "trained.tar"
    tar.write_bytes(_bytes(trained["weights"]))
    return tar


def test_trainings_validate_against_training_input(train_api):
    status, body = train_api.post({"lr_scheduler": "cosine"}, endpoint="/trainings")
    assert status == 422
    locs = {tuple(d["loc"]) for d in body["detail"]}
    assert locs == {("body", "input", "lr_scheduler"), ("body", "input", "input_images")}  # required, missing


def test_training_returns_weights_checkpoints_dataset_and_validation_images(trained, trained_tar: Path):
    import tarfile

    assert set(trained) == {"weights", "checkpoints", "dataset", "validation_images"}
    with tarfile.open(trained_tar) as tar:
        assert {"lora.safetensors", "embeddings.pti", "special_params.json", "tok.safetensors"} <= set(tar.getnames())
    with tarfile.open(fileobj=io.BytesIO(_bytes(trained["checkpoints"]))) as tar:
        assert "checkpoints/checkpoint-1/lora.safetensors" in tar.getnames()
    with tarfile.open(fileobj=io.BytesIO(_bytes(trained["dataset"]))) as tar:
        assert "dataset/captions.csv" in tar.getnames()
    images = [Image.open(io.BytesIO(_bytes(uri))) for uri in trained["validation_images"]]
    assert [image.size for image in images] == [(64, 64), (64, 64)]


def test_a_training_server_removes_the_previous_outputs_once_delivered(trained, train_api, server_tmp):
    """Each training's files stay until the next training starts (by then coglet has sent them), then go;
    a training without checkpoints returns null for them."""
    first = _outputs(server_tmp)
    assert len(first) == 1
    zip_uri = train_api.data_uri(photos_zip(), "application/zip")
    status, body = train_api.post({"input_images": zip_uri, **QUICK_TRAINING}, endpoint="/trainings")
    assert status == 200 and body["status"] == "succeeded", body.get("error")
    assert body["output"]["checkpoints"] is None
    second = _outputs(server_tmp)
    assert len(second) == 1 and second != first
    status, body = train_api.post({"input_images": zip_uri, **QUICK_TRAINING, "resolution": 12},
                                  endpoint="/trainings")
    assert body["status"] == "failed" and "resolution" in body["error"]
    assert _outputs(server_tmp) == []  # delivered, and the failed one left nothing


def test_trained_weights_at_setup_and_per_request(trained_tar: Path, make_api):
    with running_server("predict", env=TINY_ENV, weights=str(trained_tar), timeout=300) as base_url:
        api = make_api(base_url)
        assert "loading trained weights given at setup (COG_WEIGHTS)" in health(base_url)["setup"]["logs"]
        body = api.predict_ok(prompt="a photo of TOK")
        assert "Prompt: a photo of TOK" not in body["logs"]  # the token became the trained embeddings
        assert [image.size for _, image in api.images(body["output"])] == [(64, 64)]
        # the same weights named per request (replicate_weights) work too
        api.predict_ok(prompt="a photo of TOK", replicate_weights=str(trained_tar))
    assert health(base_url, timeout=0.5) is None, "running_server stops the server (and its worker) on exit"
