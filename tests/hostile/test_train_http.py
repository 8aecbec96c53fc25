"""Hostile archives through coglet's /trainings (one training server): each training fails with a
message naming input_images, nothing lands in the canary folder or beside it, the server's TMPDIR
keeps no training work folders, and the server then runs a real (tiny) training normally.
"""

from __future__ import annotations

import tarfile
import zipfile

import pytest
from hostile.builders import (
    BOMB_BYTES, FAKE_PNG, caption_csv, photos, photos_with_captions, png, png_with_size, tar_bytes, tar_link,
    truncated_png, zip_bytes, zip_symlink, zip_with_raw_name,
)

QUICK = {"resolution": 64, "max_train_steps": 1, "train_batch_size": 1, "lr_warmup_steps": 0,
         "checkpointing_steps": 1000, "seed": 1, "lora_rank": 2}  # fmt: skip


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-canary")
    (root / "canary").mkdir()
    (root / "secret.png").write_bytes(png())
    return root


def _cases(c):
    """name -> (archive bytes, mime, words the error must contain)."""
    canary_dir = c / "canary"
    return {
        "zip-traversal": (zip_bytes(photos(1) + [("../../../evil.png", png())]), "zip", ["outside the archive"]),
        "zip-absolute-into-canary": (zip_bytes(photos(1) + [(str(canary_dir / "evil.png"), png())]), "zip", ["absolute path"]),
        "tar-absolute-into-canary": (tar_bytes(photos(1) + [(str(canary_dir / "evil.png"), png())]), "tar", ["absolute path"]),
        "tar-symlink-dir-out": (tar_bytes([tar_link("d", str(canary_dir)), ("d/evil.png", png())], "w:gz"), "gzip",
                                ["symbolic link"]),
        "tar-hardlink-out": (tar_bytes(photos(1) + [tar_link("h.png", str(c / "secret.png"), tarfile.LNKTYPE)]), "tar",
                             ["hard link"]),
        "zip-symlink": (zip_bytes(photos(1) + [zip_symlink("s.png", "/etc/passwd")]), "zip", ["symbolic link"]),
        "zip-bomb": (zip_bytes([("huge.bmp", bytes(BOMB_BYTES))]), "zip", ["MAX_RATIO", "decompression bomb"]),
        "tar-gz-bomb": (tar_bytes([("huge.bmp", bytes(BOMB_BYTES))], "w:gz"), "gzip", ["MAX_RATIO", "decompression bomb"]),
        "pixel-bomb": (zip_bytes(photos(1) + [("bomb.png", png_with_size(100_000, 100_000))]), "zip",
                       ["bomb.png", "MAX_IMAGE_PIXELS"]),
        "fake-and-truncated-images": (zip_bytes([("a.png", FAKE_PNG), ("b.png", truncated_png())]), "zip",
                                      ["none readable"]),
        "empty-zip": (zip_bytes([]), "zip", ["holds no image files"]),
        "empty-tar": (tar_bytes([]), "tar", ["holds no image files"]),
        "csv-mismatch": (zip_bytes(photos(2) + [("captions.csv", caption_csv([("TOK x", "nope.png")]))]), "zip",
                         ["caption csv", "does not match"]),
        "non-utf8-zip-name": (zip_with_raw_name(b"\xff\xfe.png", png()), "zip", ["not valid UTF-8"]),
        "non-utf8-tar-name-pixel-bomb": (tar_bytes([("\udcff\udcfe.png", png_with_size(20_000, 20_000))]), "tar",
                                         ["MAX_IMAGE_PIXELS"]),
        "very-long-name-pixel-bomb": (zip_bytes([("n" * 2000 + ".png", png_with_size(20_000, 20_000))]), "zip",
                                      ["MAX_IMAGE_PIXELS"]),
        "3000-tiny-images": (zip_bytes([(f"{i:04d}.png", png((2, 2))) for i in range(3000)], zipfile.ZIP_STORED), "zip",
                             ["MAX_IMAGES"]),
        "not-an-archive": (bytes(range(256)) * 16, "octet-stream", ["not a zip or tar archive"]),
    }


CASE_NAMES = sorted(_cases(__import__("pathlib").Path("/nonexistent")))
MIMES = {"zip": "application/zip", "tar": "application/x-tar", "gzip": "application/gzip",
         "octet-stream": "application/octet-stream"}


def _work_dirs(api) -> list[str]:
    return sorted(p.name for p in api.tmp.iterdir() if p.name.startswith(("sdxl-train-", "sdxl-weights-")))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_archive_fails_the_training_naming_input_images(train_api, canary, name):
    data, kind, words = _cases(canary)[name]
    parent_before = sorted(p.name for p in canary.iterdir())
    work_before = _work_dirs(train_api)
    status, body = train_api.post({"input_images": train_api.data_uri(data, MIMES[kind]), **QUICK}, endpoint="/trainings")
    assert status == 200, body
    assert body["status"] == "failed", (body["status"], (body.get("logs") or "")[-1500:])
    assert "input_images" in body["error"] and all(w in body["error"] for w in words), body["error"]
    assert list((canary / "canary").iterdir()) == []
    assert sorted(p.name for p in canary.iterdir()) == parent_before
    assert _work_dirs(train_api) == work_before
    assert train_api.status() in ("READY", "BUSY")


def test_failed_trainings_leave_no_output_folders_in_tmp(train_api):
    status, body = train_api.post({"input_images": train_api.data_uri(zip_bytes([]), MIMES["zip"]), **QUICK},
                                  endpoint="/trainings")
    assert body["status"] == "failed"
    assert [n for n in _work_dirs(train_api) if n.startswith("sdxl-weights-")] == []


def test_after_hostile_archives_a_real_training_succeeds(train_api, canary):
    data = zip_bytes(photos_with_captions(2))
    status, body = train_api.post({"input_images": train_api.data_uri(data, MIMES["zip"]), **QUICK}, endpoint="/trainings")
    assert status == 200, body
    assert body["status"] == "succeeded", (body.get("error"), (body.get("logs") or "")[-1500:])
    [tar] = train_api.output_bytes({"output": body["output"]["weights"]})
    import io

    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        names = t.getnames()
    assert "lora.safetensors" in names and "embeddings.pti" in names
    assert list((canary / "canary").iterdir()) == []
    assert [n for n in _work_dirs(train_api) if n.startswith("sdxl-train-")] == []
