"""The tests' client of a running coglet server: synchronous and asynchronous requests, cancel, health,
and the images that travel through it. Requests go through ``cogrun.client.post_json``, so the tests
and the command line share one 409-retry policy."""

from __future__ import annotations

import base64
import io
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from cogrun.client import post_json
from cogrun.serve import health

HTTP_TIMEOUT = 300


class Api:
    """One server. ``defaults`` are merged under the inputs of ``predict*`` (small and fast images);
    ``tmp`` and ``cache`` are the server's TMPDIR and weights cache when the test chose them."""

    def __init__(self, base_url: str, tmp: Path | None = None, cache: Path | None = None, defaults: dict | None = None):
        self.base_url, self.tmp, self.cache = base_url, tmp, cache
        self.defaults = dict(defaults or {})

    def post(self, inputs: dict, endpoint: str = "/predictions") -> tuple[int, dict]:
        """POST ``{"input": inputs}`` synchronously; (HTTP status, JSON body), for 4xx too; 409 is retried."""
        status, body, _ = post_json(self.base_url, endpoint, {"input": inputs}, timeout=HTTP_TIMEOUT)
        assert status != 409, "the server stayed at capacity (409)"
        return status, body

    def predict(self, **inputs) -> dict:
        status, body = self.post({**self.defaults, **inputs})
        assert status == 200, body
        return body

    def predict_ok(self, **inputs) -> dict:
        """A prediction that must succeed; returns the response body."""
        body = self.predict(**inputs)
        assert body["status"] == "succeeded", body.get("error")
        return body

    def predict_failed(self, **inputs) -> dict:
        """A prediction coglet accepts (200) but whose run fails with an error; returns the response body."""
        body = self.predict(**inputs)
        assert body["status"] == "failed", (body["status"], (body.get("logs") or "")[-2000:])
        assert body["error"], body
        return body

    def start_async(self, prediction_id: str, inputs: dict, webhook: str | None = None) -> tuple[int, dict]:
        body = {"id": prediction_id, "input": inputs}
        if webhook:
            body.update(webhook=webhook, webhook_events_filter=["start", "logs", "completed"])
        status, answer, _ = post_json(self.base_url, "/predictions", body, {"Prefer": "respond-async"}, HTTP_TIMEOUT)
        return status, answer

    def cancel(self, prediction_id: str) -> int:
        request = urllib.request.Request(f"{self.base_url}/predictions/{prediction_id}/cancel", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    def status(self) -> str | None:
        return (health(self.base_url) or {}).get("status")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status() == "READY":
                return
            time.sleep(0.1)
        raise AssertionError(f"server not READY after {timeout}s (status {self.status()})")

    @staticmethod
    def output_bytes(body: dict) -> list[bytes]:
        output = body["output"]
        uris = output if isinstance(output, list) else [output]
        return [base64.b64decode(uri.partition(",")[2]) for uri in uris]

    @staticmethod
    def pixels(body: dict) -> list[np.ndarray]:
        return [np.array(Image.open(io.BytesIO(b))) for b in Api.output_bytes(body)]

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

