"""Start the real Cog runtime (coglet) for this repository, the way the built image does.

::

    python -m cogrun.serve                   # predict server on :5000 (PORT or --port)
    python -m cogrun.serve --train           # training server (/trainings)
    python -m cogrun.serve --weights URL     # COG_WEIGHTS: a trained tar applied at setup
    python -m cogrun.serve --config cog.turbo.yaml   # another Cog model of this repository (few-step SDXL)

The schema coglet validates with (``.cog/openapi_schema.json``) is regenerated first when stale. coglet reads
it from ``.cog/`` of its working directory, so another config's server runs in a temporary directory whose
``.cog`` is that config's schema folder (``.cog/turbo/``), importing the code from the repository.
From Python, :func:`running_server` starts one in the background for the length of a ``with`` block.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Iterator, Mapping

from cogrun import DEFAULT_CONFIG, REPO_ROOT, schema_path

SETUP_TIMEOUT = float(os.environ.get("COGRUN_SETUP_TIMEOUT", "600"))
LOG_TAIL_CHARS = 6000
FATAL_HEALTH = {"SETUP_FAILED", "DEFUNCT"}


class ServerError(RuntimeError):
    """The server did not become ready; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(mode: str = "predict", host: str = "127.0.0.1") -> list[str]:
    """``python -m cog.server.http`` with the flags of ``mode`` (the same module the image runs)."""
    if mode not in ("predict", "train"):
        raise ValueError(f"mode must be 'predict' or 'train', not {mode!r}")
    command = [sys.executable, "-m", "cog.server.http", "--host", host]
    if mode == "train":
        command += ["--x-mode", "train"]
    return command


def server_env(
    mode: str = "predict",
    port: int = 5000,
    env: Mapping[str, str] | None = None,
    weights: str | None = None,
    refs: Mapping[str, str] | None = None,
    config: str = DEFAULT_CONFIG,
) -> dict[str, str]:
    """The environment coglet needs: the type stub of ``mode``, PORT, and this Python first on PATH.

    coglet starts its worker as ``python -c ...`` found on PATH, so the interpreter running this
    (for instance ``.venv/bin/python``) must come first there, or the worker cannot import coglet.
    """
    if refs is None:
        from cogrun.schema import read_refs

        refs = read_refs(REPO_ROOT, config)
    if mode not in refs:
        raise ServerError(f"no {mode} entry point is configured ({config} / {mode}.py)")
    merged = {**os.environ, **(env or {})}
    merged["PORT"] = str(port)
    merged["COG_TRAIN_TYPE_STUB" if mode == "train" else "COG_PREDICT_TYPE_STUB"] = refs[mode]
    merged["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), merged.get("PATH", "")])
    merged.setdefault("PYTHONUNBUFFERED", "1")
    if weights:
        merged["COG_WEIGHTS"] = weights
    if config != DEFAULT_CONFIG:  # run from elsewhere (see server_directory): the code is imported from here
        key = "COG_TRAIN_TYPE_STUB" if mode == "train" else "COG_PREDICT_TYPE_STUB"
        merged[key] = str(REPO_ROOT / merged[key])
        merged["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), merged.get("PYTHONPATH")) if p)
    return merged


@contextlib.contextmanager
def server_directory(config: str = DEFAULT_CONFIG) -> Iterator[Path]:
    """The working directory coglet runs in: the repository for cog.yaml; for another config a temporary
    directory whose ``.cog`` links that config's schema folder (coglet reads ``.cog/openapi_schema.json``)."""
    if config == DEFAULT_CONFIG:
        yield REPO_ROOT
        return
    with tempfile.TemporaryDirectory(prefix="cogrun-app-") as directory:
        (Path(directory) / ".cog").symlink_to(schema_path(config).parent, target_is_directory=True)
        yield Path(directory)


def refresh_schema(config: str = DEFAULT_CONFIG) -> bool:
    """Regenerate the config's schema when stale (in a child process: it imports the model code).

    Returns whether the file changed.
    """
    path = schema_path(config)
    before = path.read_text() if path.exists() else None
    done = subprocess.run([sys.executable, "-m", "cogrun.schema", "--config", config], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerError(f"could not generate {path.name}:\n{done.stderr[-LOG_TAIL_CHARS:]}")
    return path.read_text() != before


def health(base_url: str, timeout: float = 2.0) -> dict | None:
    """``GET /health-check`` as a dict, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"{base_url}/health-check", timeout=timeout) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None


def _tail(log: IO[bytes] | None) -> str:
    if log is None:
        return ""
    log.flush()
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - LOG_TAIL_CHARS))
    return log.read().decode("utf-8", "replace")


def wait_until_ready(
    base_url: str, process: subprocess.Popen, timeout: float = SETUP_TIMEOUT, log: IO[bytes] | None = None
) -> dict:
    """Poll /health-check until READY; raise :class:`ServerError` (with the log tail) on exit, failure or timeout."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the server exited with code {process.returncode} before it was ready\n{_tail(log)}")
        state = health(base_url)
        status = (state or {}).get("status")
        if status == "READY":
            return state
        if status in FATAL_HEALTH:
            setup_logs = (state.get("setup") or {}).get("logs", "")
            raise ServerError(f"the server reports {status}\n{setup_logs}\n{_tail(log)}")
        time.sleep(0.25)
    raise ServerError(f"the server was not ready after {timeout:.0f}s (last health: {state})\n{_tail(log)}")


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's process group (coglet and its worker), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_server(
    mode: str = "predict",
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    weights: str | None = None,
    timeout: float = SETUP_TIMEOUT,
    refresh: bool = False,
    log_path: Path | None = None,
    config: str = DEFAULT_CONFIG,
) -> Iterator[str]:
    """Run a coglet server in the background and yield its base URL once /health-check says READY.

    The server runs from the repository root in its own process group, which is always killed on
    exit. Its output goes to ``log_path`` (default: a temporary file), whose tail is part of the
    :class:`ServerError` raised when it fails to start. ``refresh`` regenerates a stale schema first.
    ``config`` names the Cog config to serve (default cog.yaml).
    """
    if refresh:
        refresh_schema(config)
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log = stack.enter_context(tempfile.TemporaryFile(prefix="cogrun-server-"))
        else:
            log = stack.enter_context(open(log_path, "w+b"))
        process = subprocess.Popen(
            server_command(mode),
            cwd=stack.enter_context(server_directory(config)),
            env=server_env(mode, port, env, weights, config=config),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the worker goes down with it
        )
        stack.callback(stop, process)
        wait_until_ready(base_url, process, timeout, log)
        yield base_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cogrun.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="serve /trainings (train.py) instead of /predictions")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")))
    parser.add_argument("--host", default="0.0.0.0", help="default: %(default)s, as in the image")
    parser.add_argument("--weights", help="COG_WEIGHTS: URL or path of trained weights applied at setup")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the Cog config to serve (default: %(default)s)")
    args = parser.parse_args(argv)

    mode = "train" if args.train else "predict"
    with server_directory(args.config) as directory:
        return _serve(args, mode, directory)


def _serve(args: argparse.Namespace, mode: str, directory: Path) -> int:
    try:
        if refresh_schema(args.config):
            print(f"regenerated {schema_path(args.config).relative_to(REPO_ROOT)} (it was stale)", file=sys.stderr)
        env = server_env(mode, args.port, weights=args.weights, config=args.config)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = server_command(mode, host=args.host)
    process = subprocess.Popen(command, cwd=directory, env=env, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:  # coglet shuts down cleanly on SIGINT/SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    base_url = f"http://127.0.0.1:{args.port}"
    try:
        wait_until_ready(base_url, process)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        stop(process)
        return 1
    endpoint = "/trainings" if args.train else "/predictions"
    print(f"ready: {base_url}  (POST {base_url}{endpoint}, schema at {base_url}/openapi.json)", flush=True)
    return process.wait()


if __name__ == "__main__":
    sys.exit(main())
