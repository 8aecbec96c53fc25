"""The real photos through the real runtime: POST /trainings -> weights tar -> a predict server uses it.

zeke (a person) goes up as a zip data URI with face masks; monster (a toy, with caption.csv) as a
tar behind an extension-less URL on loopback, as Replicate users upload them. The resulting tar is
used as COG_WEIGHTS at setup and as replicate_weights per request, and must change the image.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from devkit.http_files import FileServer

from cogrun import REPO_ROOT
from cogrun.serve import running_server

DATASETS = REPO_ROOT.parent / "shared" / "datasets"
pytestmark = pytest.mark.skipif(
    not (DATASETS / "zeke").is_dir() or not (DATASETS / "monster").is_dir(),
    reason="../shared/datasets not present: the real photos are only available beside the clone in CI",
)

TINY_ENV = {**os.environ, "SDXL_WEIGHTS": "tiny"}
QUICK = {"resolution": 64, "max_train_steps": 3, "train_batch_size": 2, "lr_warmup_steps": 0, "seed": 3,
         "checkpointing_steps": 1000, "lora_lr": 0.05, "ti_lr": 0.05}  # fmt: skip
PROMPT = {"prompt": "a photo of TOK", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 11}


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in sorted(folder.iterdir()):
            archive.write(f, f.name)
    return buffer.getvalue()


def _tar(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for f in sorted(folder.iterdir()):
            archive.add(f, f"monster/{f.name}")
    return buffer.getvalue()


def _output(body: dict, field: str = "weights") -> bytes:
    assert body["status"] == "succeeded", body.get("error")
    header, _, payload = body["output"][field].partition(",")
    assert header.startswith("data:") and header.endswith(";base64")
    return base64.b64decode(payload)


@pytest.fixture(scope="module")
def files():
    with FileServer({"/dataset": _tar(DATASETS / "monster")}) as server:
        yield server


@pytest.fixture(scope="module")
def trained(make_api, files, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("round_trip")
    with running_server("train", env=TINY_ENV, timeout=300) as base_url:
        api = make_api(base_url)
        zeke = api.data_uri(_zip(DATASETS / "zeke"), "application/zip")
        status, body = api.post({"input_images": zeke, "use_face_detection_instead": True, **QUICK}, "/trainings")
        assert status == 200, body
        (out / "zeke.tar").write_bytes(_output(body))
        status, body = api.post({"input_images": files.url + "/dataset", **QUICK}, "/trainings")
        assert status == 200, body
        (out / "monster.tar").write_bytes(_output(body))
        (out / "monster-dataset.tar").write_bytes(_output(body, "dataset"))
    return {"zeke": out / "zeke.tar", "monster": out / "monster.tar", "monster-dataset": out / "monster-dataset.tar"}


def _pixels(api, body) -> np.ndarray:
    ((_, image),) = api.images(body["output"])
    return np.array(image)


def test_monster_captions_come_from_its_csv(trained):
    import csv

    with open(DATASETS / "monster" / "caption.csv", newline="") as f:
        expected = {row["caption"] for row in csv.DictReader(f)}
    with tarfile.open(trained["monster-dataset"]) as tar:
        rows = list(csv.DictReader(io.StringIO(tar.extractfile("dataset/captions.csv").read().decode())))
    assert {row["caption"] for row in rows} == expected


def test_trained_tars_drive_the_predictor_at_setup_and_per_request(trained, make_api, api):
    base = _pixels(api, api.predict_ok(**PROMPT))
    with running_server("predict", env=TINY_ENV, weights=str(trained["zeke"]), timeout=300) as url:
        tuned_api = make_api(url)
        at_setup = _pixels(tuned_api, tuned_api.predict_ok(**PROMPT))
    assert np.abs(at_setup.astype(int) - base.astype(int)).mean() > 0.5
    per_request = _pixels(api, api.predict_ok(replicate_weights=str(trained["zeke"]), **PROMPT))
    np.testing.assert_array_equal(per_request, at_setup)
    # the monster tar, fetched by URL as Replicate passes it
    with FileServer({"/monster-weights": trained["monster"].read_bytes()}) as server:
        monster = _pixels(api, api.predict_ok(replicate_weights=server.url + "/monster-weights", **PROMPT))
    assert not np.array_equal(monster, base) and not np.array_equal(monster, at_setup)
    np.testing.assert_array_equal(_pixels(api, api.predict_ok(**PROMPT)), base)
