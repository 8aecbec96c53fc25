"""``replicate_weights`` cannot read the server's own files, and downloads are bounded: every probe over
HTTP through coglet, against a server configured as by default (no SDXL_LOCAL_WEIGHTS_DIR), with a
2 s stall limit and an 8 MiB weights cache so the bounds are reached quickly.

Each probe asserts the message (naming the input, quoting no file and listing no folder, the same
whether a path exists or not), the weights cache (no entry, no temp file; 0700 folders and 0600 files
once something is in it) and that the next base image is bitwise the one before.
"""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path

import pytest

from devkit.api import Api
from weights.sources import SHOWN_CHARS

PLAIN = {"prompt": "a photo of a dog", "seed": 1234, "width": 64, "height": 64, "num_inference_steps": 2}
CACHE_BYTES = 8 * 1024**2
STALL_SECONDS = 2
SECRET = b"root:x:0:0:SECRET-CANARY:/root:/bin/bash\n"


@pytest.fixture(scope="module")
def server(make_private_server, tmp_path_factory):
    """A predict server as an operator starts it by default (no SDXL_LOCAL_WEIGHTS_DIR), with small bounds."""
    with make_private_server("predict", tmp_path_factory, "sources-server", SDXL_LOCAL_WEIGHTS_DIR="",
                             SDXL_LORA_CACHE_BYTES=str(CACHE_BYTES),
                             SDXL_DOWNLOAD_STALL_SECONDS=str(STALL_SECONDS)) as api:
        yield api


@pytest.fixture(scope="module")
def baseline(server) -> bytes:
    [png] = server.output_bytes(server.predict_ok(**PLAIN))
    return png


@pytest.fixture(scope="module")
def lora_tar(tmp_path_factory) -> bytes:
    import weights
    from diffusers import UNet2DConditionModel
    from devkit.reference_tars import reference_lora_tar

    unet = UNet2DConditionModel.from_pretrained(weights.resolve("sdxl-base"), subfolder="unet", variant="fp16")
    return reference_lora_tar(tmp_path_factory.mktemp("lora") / "good.tar", unet).read_bytes()


@pytest.fixture
def secret_file(tmp_path) -> Path:
    path = tmp_path / "secret.tar"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def cache_listing(api) -> list[str]:
    return sorted(p.name for p in api.cache.iterdir()) if api.cache.exists() else []


def assert_refused_cleanly(api, baseline, body, *, also_absent: bytes = SECRET) -> str:
    """The failed request: message naming the input, nothing of the file; no cache entry; base bitwise."""
    error = body["error"].replace("Prediction failed: ", "")  # coglet's prefix (twice)
    assert error.startswith(("WeightsError: replicate_weights: ", "DownloadError: replicate_weights: ")), error
    assert also_absent.decode() not in error and "SECRET" not in error
    assert cache_listing(api) == [], cache_listing(api)
    leftovers = [p.name for p in api.tmp.iterdir() if not p.name.startswith("sdxl-out-")]
    assert leftovers == [], leftovers
    [again] = api.output_bytes(api.predict_ok(**PLAIN))
    assert again == baseline, "the predictor is not back to the base model bitwise"
    return error


# --- paths on the server ------------------------------------------------------------------------


def test_server_paths_are_refused_with_one_message_whether_they_exist_or_not(server, baseline, secret_file, tmp_path):
    probes = {
        "absolute file": "/etc/passwd",
        "our own secret file": str(secret_file),
        "traversal": "../../../../etc/shadow",
        "traversal to the secret": "../" * 8 + str(secret_file).lstrip("/"),
        "missing": str(tmp_path / "does-not-exist.tar"),
        "directory": "/etc",
        "home directory": "/root",
        "our own directory": str(tmp_path),
        "relative file": "./weights/__init__.py",
    }
    messages = {}
    for name, value in probes.items():
        body = server.predict_failed(replicate_weights=value, **PLAIN)
        error = assert_refused_cleanly(server, baseline, body)
        assert "is not an http(s) URL, a data: URI or a Hugging Face repo id" in error, (name, error)
        assert "SDXL_LOCAL_WEIGHTS_DIR" in error
        for word in ("passwd", "shadow", "bin", "sdxl-out", "__init__"):  # no listing, no content
            assert word not in error.replace(value, ""), (name, error)
        shown = repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "...")
        messages[name] = error.replace(shown, "<value>")
    assert len(set(messages.values())) == 1, messages  # no existence oracle


# --- bounded downloads --------------------------------------------------------------------------


def _endless_chunked(handler) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    block = b"\0" * 65536
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the client hangs up (a test never waits on it)
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))


def _stalled(handler) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n" + b"x" * 1000)
    handler.wfile.flush()
    time.sleep(20)  # never finishes: the downloader must give up long before


def _redirect(to: str):
    def answer(handler) -> None:
        handler.send_response(302)
        handler.send_header("Location", to)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


def test_an_endless_chunked_body_stops_at_the_cache_size(server, baseline, file_server):
    file_server.handlers["/endless"] = _endless_chunked
    body = server.predict_failed(replicate_weights=file_server.url + "/endless", **PLAIN)
    error = assert_refused_cleanly(server, baseline, body)
    assert f"over the limit of {CACHE_BYTES} bytes (the size of the weights cache)" in error, error


def test_a_stalled_body_fails_within_the_stall_limit_across_retries(server, baseline, file_server):
    file_server.handlers["/stalled"] = _stalled
    before = len(file_server.requests)
    body = server.predict_failed(replicate_weights=file_server.url + "/stalled", **PLAIN)
    error = assert_refused_cleanly(server, baseline, body)
    assert f"could not download {file_server.url}/stalled: no data arrived for {STALL_SECONDS} s" in error, error
    assert len(file_server.requests) - before <= 3  # the stall budget is shared by every retry


@pytest.mark.parametrize("target", ["/loop", "file:///etc/passwd"])
def test_a_redirect_loop_or_a_redirect_out_of_http_fails_at_once(server, baseline, file_server, target):
    file_server.handlers["/loop"] = _redirect("/loop")
    file_server.handlers["/to-file"] = _redirect("file:///etc/passwd")
    path = "/loop" if target == "/loop" else "/to-file"
    before = len(file_server.requests)
    body = server.predict_failed(replicate_weights=file_server.url + path, **PLAIN)
    error = assert_refused_cleanly(server, baseline, body)
    assert "a redirect loop or more than 10 redirects" in error, error
    assert len(file_server.requests) - before <= 11  # followed once, not retried


def test_a_downloaded_file_that_is_refused_is_not_kept_and_not_quoted(server, baseline, file_server):
    file_server.files["/page"] = SECRET
    body = server.predict_failed(replicate_weights=file_server.url + "/page", **PLAIN)
    error = assert_refused_cleanly(server, baseline, body)
    assert f"found {len(SECRET)} bytes of unknown data" in error, error
    file_server.files["/html"] = page = b"<html><title>SECRET</title></html>"
    body = server.predict_failed(replicate_weights=file_server.url + "/html", **PLAIN)
    error = assert_refused_cleanly(server, baseline, body)
    assert f"found a text file of {len(page)} bytes" in error, error


def test_a_bad_data_uri_fails_naming_the_input_and_leaves_nothing(server, baseline):
    body = server.predict_failed(replicate_weights="data:application/x-tar;base64,%%%not-base64", **PLAIN)
    error = assert_refused_cleanly(server, baseline, body)
    assert "not valid base64" in error, error
    body = server.predict_failed(replicate_weights=Api.data_uri(SECRET, "text/plain"), **PLAIN)
    assert_refused_cleanly(server, baseline, body)


# --- what is accepted: URL, data: URI; the cache is private -------------------------------------


def test_url_and_data_uri_give_the_same_lora_image_and_the_cache_is_private(server, baseline, file_server, lora_tar):
    assert cache_listing(server) == []
    file_server.files["/good.tar"] = lora_tar
    by_url = server.output_bytes(server.predict_ok(replicate_weights=file_server.url + "/good.tar", lora_scale=1.0, **PLAIN))
    assert by_url != [baseline]
    by_data = server.output_bytes(server.predict_ok(
        replicate_weights=Api.data_uri(lora_tar, "application/x-tar"), lora_scale=1.0, **PLAIN))
    assert by_data == by_url
    root = server.cache
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    entries = list(root.iterdir())
    assert len(entries) == 2 and not any(e.name.startswith(".") for e in entries)
    for path in [*entries, *(p for e in entries for p in e.rglob("*"))]:
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))
    [again] = server.output_bytes(server.predict_ok(**PLAIN))
    assert again == baseline, "the predictor is not back to the base model bitwise"
    for entry in entries:  # the other tests, in any order, expect an empty cache (a refusal adds nothing)
        shutil.rmtree(entry)
