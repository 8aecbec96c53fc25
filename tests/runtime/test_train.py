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
def train_api(make_api):
    with running_server("train", env=TINY_ENV, timeout=300) as base_url:
        yield make_api(base_url)


@pytest.fixture(scope="module")
def trained_tar(train_api, tmp_path_factory) -> Path:
    """Weights from a two-step LoRA training on the train server."""
    zip_uri = train_api.data_uri(photos_zip(), "application/zip")
    status, body = train_api.post({"input_images": zip_uri, **QUICK_TRAINING}, endpoint="/trainings")
    assert status == 200, body
    assert body["status"] == "succeeded", body.get("error")
    header, _, payload = body["output"]["weights"].partition(",")
    assert header.startswith("data:") and header.endswith(";base64")
    tar = tmp_path_factory.mktemp("trained") / "trained.tar"
    tar.write_bytes(base64.b64decode(payload))
    return tar


def test_trainings_validate_against_training_input(train_api):
    status, body = train_api.post({"lr_scheduler": "cosine"}, endpoint="/trainings")
    assert status == 422
    locs = {tuple(d["loc"]) for d in body["detail"]}
    assert locs == {("body", "input", "lr_scheduler"), ("body", "input", "input_images")}  # required, missing


def test_training_returns_a_weights_tar(trained_tar: Path):
    import tarfile

    with tarfile.open(trained_tar) as tar:
        assert tar.getnames()


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
