"""Fixtures of the runtime tests: a real coglet server on tiny weights, and helpers to talk to it."""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from cogrun import REPO_ROOT
from cogrun.serve import running_server

TINY = {"SDXL_WEIGHTS": "tiny"}
FAST = {"width": 64, "height": 64, "num_inference_steps": 2}  # a few hundred milliseconds per image on CPU
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "cog"


@pytest.fixture(scope="module")
def predict_server() -> str:
    """Base URL of a predict server (coglet + predict.py on tiny weights), one per test module."""
    with running_server("predict", env={**os.environ, **TINY}, timeout=300) as base_url:
        yield base_url


class Api:
    """Requests to one server, and the images that travel through it (test modules get it as ``api``)."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def post(self, inputs: dict, endpoint: str = "/predictions") -> tuple[int, dict]:
        """POST ``{"input": inputs}`` synchronously; returns (HTTP status, JSON body) even for 4xx.

        A 409 (slot still busy: coglet answers a synchronous prediction a moment before it frees the
        slot) is retried, as its docs tell clients to.
        """
        for attempt in range(50):
            request = urllib.request.Request(
                self.base_url + endpoint,
                data=json.dumps({"input": inputs}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as e:
                if e.code != 409:
                    return e.code, json.loads(e.read() or b"{}")
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("the server stayed at capacity (409) for ~60s")

    def predict_ok(self, **inputs) -> dict:
        """A prediction (small and fast unless overridden) that must succeed; returns the response body."""
        status, body = self.post({**FAST, **inputs})
        assert status == 200, body
        assert body["status"] == "succeeded", body.get("error")
        return body

    def predict_failed(self, **inputs) -> dict:
        """A prediction coglet accepts (200) but whose run fails; returns the response body."""
        status, body = self.post({**FAST, **inputs})
        assert status == 200, body
        assert body["status"] == "failed", body
        return body

    @staticmethod
    def images(output: list[str]) -> list[tuple[str, Image.Image]]:
        """Decode each ``data:<mime>;base64,...`` output into (mime, image)."""
        decoded = []
        for uri in output:
            header, _, payload = uri.partition(",")
            assert header.startswith("data:") and header.endswith(";base64"), header[:60]
            image = Image.open(io.BytesIO(base64.b64decode(payload)))
            image.load()
            decoded.append((header[len("data:") : -len(";base64")], image))
        return decoded

    @staticmethod
    def png(width: int, height: int, mode: str = "RGB", color=(200, 80, 40)) -> bytes:
        buffer = io.BytesIO()
        Image.new(mode, (width, height), color).save(buffer, format="PNG")
        return buffer.getvalue()

    @staticmethod
    def mask_png(width: int, height: int) -> bytes:
        """White square in the middle (to repaint) on black (kept)."""
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        return buffer.getvalue()

    @staticmethod
    def data_uri(data: bytes, mime: str = "image/png") -> str:
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def api(predict_server: str) -> Api:
    return Api(predict_server)


@pytest.fixture
def shared_reference() -> Path:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip("../shared/reference/cog not present beside the clone")
    return SHARED_REFERENCE


@pytest.fixture(scope="session")
def make_api():
    """``make_api(base_url)`` -> :class:`Api`, for servers a test module starts itself."""
    return Api
