"""A ``cog predict``-style command line for a running Cog server (or one it starts itself).

::

    python -m cogrun.client -i prompt="an astronaut" -i width=768          # starts a local server
    python -m cogrun.client --url http://localhost:5000 -i image=@photo.png -i prompt_strength=0.6
    python -m cogrun.client --train -i input_images=@faces.zip -o trained   # POST /trainings
    python -m cogrun.client --config cog.turbo.yaml -i prompt="a red fox"    # the few-step model

``-i name=value``: the value is a JSON number or boolean when it parses as one, else a string;
``@path`` sends the file as a data: URI. Output files (data: URIs or URLs) are written to
``OUTDIR/output.N.ext`` (default ``./outputs``). Exits 1 with the server's message when it fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

# the formats the model returns, whatever the local mimetypes database says
BUSY_RETRY_SECONDS = 60.0
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "application/x-tar": ".tar"}


class PredictionError(RuntimeError):
    """The server refused the request (422) or the prediction/training failed."""


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"@a.png"`` -> data URI, anything else -> the string."""
    if text.startswith("@"):
        return file_to_data_uri(Path(text[1:]))
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (bool, int, float)) else text


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``["prompt=a dog", "width=64"]`` -> ``{"prompt": "a dog", "width": 64}``."""
    inputs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"-i takes name=value, got {pair!r}")
        inputs[name] = parse_value(value)
    return inputs


def file_to_data_uri(path: Path) -> str:
    """The file as ``data:<mime>;base64,...`` (how a file input travels without a URL)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def post_json(base_url: str, endpoint: str, payload: dict, headers: dict | None = None,
              timeout: float | None = None) -> tuple[int, dict, bytes]:
    """POST ``payload`` as JSON; (HTTP status, JSON body or {}, raw body), for error statuses too.

    The one retry policy for every client of a server (this command line and the tests): a 409 means
    every slot is busy - another run, or the previous one still releasing its slot (coglet answers a
    synchronous prediction a moment before it frees the slot) - and is retried for BUSY_RETRY_SECONDS,
    as coglet's docs tell clients to; then the 409 is returned.
    """
    data = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    deadline = time.monotonic() + BUSY_RETRY_SECONDS
    wait = 0.05
    while True:
        request = urllib.request.Request(base_url.rstrip("/") + endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        if status != 409 or time.monotonic() > deadline:
            try:
                return status, json.loads(raw) if raw else {}, raw
            except ValueError:
                return status, {}, raw
        time.sleep(wait)
        wait = min(wait * 2, 1.0)


def run(base_url: str, inputs: dict[str, Any], train: bool = False, timeout: float | None = None) -> dict:
    """POST the inputs to /predictions (or /trainings), wait for the end, and return the response.

    Raises :class:`PredictionError` with the server's words for a refused request (422 detail) or a
    failed run (``error``).
    """
    endpoint = "/trainings" if train else "/predictions"
    # synchronous: coglet answers at the end
    status, result, raw = post_json(base_url, endpoint, {"input": inputs}, {"Prefer": "wait"}, timeout)
    if status >= 400:
        raise PredictionError(_describe_refusal(status, raw))
    if result.get("status") != "succeeded":
        raise PredictionError(result.get("error") or f"status {result.get('status')}", result)
    return result


def _describe_refusal(code: int, raw: bytes) -> str:
    body = raw.decode("utf-8", "replace")
    try:
        payload = json.loads(body)
    except ValueError:
        return f"HTTP {code}: {body.strip()}"
    if isinstance(payload.get("detail"), list):
        lines = [f"{'.'.join(str(p) for p in d.get('loc', [])[2:]) or 'input'}: {d.get('msg')}" for d in payload["detail"]]
        return f"HTTP {code}: invalid input\n  " + "\n  ".join(lines)
    return f"HTTP {code}: {payload.get('error') or payload.get('detail') or body.strip()}"


def file_outputs(output: Any) -> Iterator[str]:
    """Every data: URI or http(s) URL in an output (a list, a single value, or an object's values)."""
    if isinstance(output, str):
        if output.startswith(("data:", "http://", "https://")):
            yield output
    elif isinstance(output, list):
        for item in output:
            yield from file_outputs(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from file_outputs(item)


def fetch_file(uri: str) -> tuple[bytes, str]:
    """The bytes behind a data: URI or URL, and the file extension they should get."""
    if uri.startswith("data:"):
        header, _, payload = uri.partition(",")
        mime = header[len("data:") :].split(";")[0]
        data = base64.b64decode(payload) if ";base64" in header else urllib.parse.unquote_to_bytes(payload)
        return data, _EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"
    with urllib.request.urlopen(uri) as response:
        return response.read(), Path(urllib.parse.urlparse(uri).path).suffix or ".bin"


def save_outputs(output: Any, out_dir: Path) -> list[Path]:
    """Write each file output to ``out_dir/output.N.ext``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, uri in enumerate(file_outputs(output)):
        data, ext = fetch_file(uri)
        path = out_dir / f"output.{i}{ext}"
        path.write_bytes(data)
        written.append(path)
    return written


@contextlib.contextmanager
def _server(url: str | None, train: bool, weights: str | None, config: str) -> Iterator[str]:
    """The given URL, or a local server started for this one run."""
    if url:
        yield url
        return
    from cogrun.serve import running_server

    print("starting a local server (pass --url to use a running one)...", file=sys.stderr, flush=True)
    with running_server("train" if train else "predict", weights=weights, refresh=True, config=config) as base_url:
        yield base_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cogrun.client",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE", help="an input (repeat)")
    parser.add_argument("--url", default=os.environ.get("COG_URL"), help="a running server; default: start one")
    parser.add_argument("--train", action="store_true", help="POST /trainings instead of /predictions")
    parser.add_argument("--weights", help="COG_WEIGHTS for a self-started server (trained weights URL or path)")
    parser.add_argument("--config", default="cog.yaml", help="Cog config of a self-started server (default: %(default)s)")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("outputs"), help="default: %(default)s")
    args = parser.parse_args(argv)

    try:
        inputs = parse_inputs(args.input)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    try:
        with _server(args.url, args.train, args.weights, args.config) as base_url:
            result = run(base_url, inputs, train=args.train)
    except PredictionError as exc:
        details = exc.args[1] if len(exc.args) > 1 else {}
        if details.get("logs"):
            print(details["logs"].rstrip(), file=sys.stderr)
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    except Exception as exc:  # server failed to start, connection refused, ...: one line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

    if result.get("logs"):
        print(result["logs"].rstrip(), file=sys.stderr)
    predict_time = (result.get("metrics") or {}).get("predict_time")
    print(f"status: {result['status']}" + (f" in {predict_time:.1f}s" if predict_time else ""), file=sys.stderr)
    written = save_outputs(result.get("output"), args.output_dir)
    for path in written:
        print(path)
    if not written:  # a non-file output (text, numbers): show it as it came
        print(json.dumps(result.get("output"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
