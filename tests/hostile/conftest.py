"""Fixtures of the hostile-input suite: real coglet servers on 127.0.0.1 (tiny weights), a client
with async predictions, cancel and webhooks, loopback file servers, and a canary layout.

Servers get a private TMPDIR and weights cache so a test can see every file they leave behind.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cogrun.serve import health, running_server

FAST = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 1234}
HTTP_TIMEOUT = 300


class Api:
    """One coglet server: synchronous and asynchronous requests, cancel, health, and its PNGs."""

    def __init__(self, base_url: str, tmp: Path | None = None, cache: Path | None = None):
        self.base_url, self.tmp, self.cache = base_url, tmp, cache

    def _request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        request = urllib.request.Request(
            self.base_url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else {}

    def post(self, inputs: dict, endpoint: str = "/predictions") -> tuple[int, dict]:
        """POST synchronously; a 409 (slot still freeing) is retried, for at most ~60 s."""
        for attempt in range(60):
            status, body = self._request("POST", endpoint, {"input": inputs})
            if status != 409:
                return status, body
            time.sleep(min(0.05 * (attempt + 1), 1.0))
        raise AssertionError("the server stayed at capacity (409)")

    def predict(self, **inputs) -> dict:
        status, body = self.post({**FAST, **inputs})
        assert status == 200, body
        return body

    def predict_ok(self, **inputs) -> dict:
        body = self.predict(**inputs)
        assert body["status"] == "succeeded", body.get("error")
        return body

    def predict_failed(self, **inputs) -> dict:
        body = self.predict(**inputs)
        assert body["status"] == "failed", (body["status"], (body.get("logs") or "")[-2000:])
        assert body["error"], body
        return body

    def start_async(self, prediction_id: str, inputs: dict, webhook: str | None = None) -> tuple[int, dict]:
        body = {"id": prediction_id, "input": inputs}
        if webhook:
            body.update(webhook=webhook, webhook_events_filter=["start", "logs", "completed"])
        return self._request("POST", "/predictions", body, {"Prefer": "respond-async"})

    def cancel(self, prediction_id: str) -> int:
        return self._request("POST", f"/predictions/{prediction_id}/cancel")[0]

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
    def data_uri(data: bytes, mime: str = "image/png") -> str:
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _server_dirs(tmp_path_factory, name: str) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp(name)
    tmp, cache = root / "tmp", root / "cache"
    tmp.mkdir()
    env = {**os.environ, "SDXL_WEIGHTS": "tiny", "TMPDIR": str(tmp), "SDXL_LORA_CACHE": str(cache)}
    return tmp, cache, env


@pytest.fixture(scope="module")
def predict_api(tmp_path_factory) -> Api:
    """A predict server (one per test module) with its own TMPDIR and weights cache."""
    tmp, cache, env = _server_dirs(tmp_path_factory, "predict-server")
    with running_server("predict", env=env, timeout=300) as base_url:
        yield Api(base_url, tmp, cache)


@pytest.fixture(scope="module")
def train_api(tmp_path_factory) -> Api:
    """A training server (/trainings) with its own TMPDIR."""
    tmp, cache, env = _server_dirs(tmp_path_factory, "train-server")
    with running_server("train", env=env, timeout=300) as base_url:
        yield Api(base_url, tmp, cache)


class FileServer:
    """A loopback HTTP server (127.0.0.1 only) over path -> bytes.

    ``truncate[path] = n`` announces the full Content-Length but sends ``n`` bytes, then closes.
    Webhook POSTs are queued in ``posts``.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.requests: list[str] = []
        self.posts: queue.Queue = queue.Queue()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[: outer.truncate.get(self.path, len(body))])
                self.wfile.flush()
                self.close_connection = True

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    outer.posts.put(json.loads(data))
                except ValueError:
                    outer.posts.put({"raw": data})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def layout(tmp_path) -> Path:
    """tmp/canary (must stay empty), tmp/work (out dirs), tmp/uploads (archives)."""
    for name in ("canary", "work", "uploads"):
        (tmp_path / name).mkdir()
    return tmp_path


def listing(directory: Path) -> set[str]:
    """Every path under ``directory`` (relative), for before/after comparisons."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")} if directory.exists() else set()

