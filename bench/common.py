"""Shared bench machinery: arguments, timing (warm-up, repeats, median), peak memory, result rows, the table,
and the GPU tuning each script applies with ``--device cuda``."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the baselines are the tests' own (devkit/oracle.py, reference_tars.py): one copy of that code; the children the
# bench starts run from other folders, so the checkout is put on the path for them
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------- arguments


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--compile", action="store_true", help="cuda: torch.compile the UNet and the VAE decoder")
    ap.add_argument("--out", type=Path, default=None, help="write the result rows here as JSON")
    return ap


# ---------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str = "cpu") -> tuple[float, object]:
    sync(device)
    t = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t, result


def compare(fns: dict, *, warmup: int = 1, repeats: int = 5, device: str = "cpu", stat=min, runs: dict | None = None
            ) -> dict[str, float]:
    """Best (``stat=min``; or median) seconds of each function, run interleaved (a, b, a, b, ...) so drift and
    other processes' load hit all alike. The machine is shared: the minimum is the robust figure of the work.
    ``runs``, when given, receives every timing (name -> list of seconds): the spread, to tell noise from cost."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device)[0])
    if runs is not None:
        runs.update(times)
    return {name: stat(ts) for name, ts in times.items()}


def spread(runs: dict[str, list[float]]) -> str:
    """``ours 5.72/5.80 s, baseline 5.31/5.90 s``: every timed run, for the note."""
    def one(ts):
        return "/".join(f"{t:.2f}" if t >= 1 else f"{t * 1000:.0f}" for t in ts) + (" s" if min(ts) >= 1 else " ms")
    return ", ".join(f"{name} {one(ts)}" for name, ts in runs.items())


# ---------------------------------------------------------------- memory


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def free_ram() -> int:
    import psutil

    return psutil.virtual_memory().available


def drop_page_cache() -> bool:
    """Drop the page cache (needs root and a writable /proc/sys); False when the sandbox refuses."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


GB = 1e9


# ---------------------------------------------------------------- results


@dataclass
class Row:
    area: str
    figure: str
    ours: float | None  # seconds unless unit says otherwise
    baseline: float | None
    target: float | None = None  # on the ratio (or on ``ours`` when absolute)
    unit: str = "s"
    absolute: bool = False  # the target applies to ``ours`` itself, not the ratio
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def verdict(self) -> str:
        value = self.ours if self.absolute else self.ratio
        if self.target is None or value is None:
            return ""
        return "ok" if value <= self.target else f"MISS x{value / self.target:.2f}"


def write_rows(rows: list[Row], out: Path | None) -> None:
    if out is None:
        print_table(rows)
        return
    out.write_text(json.dumps([asdict(r) for r in rows], indent=1))


def read_rows(path: Path) -> list[Row]:
    return [Row(**r) for r in json.loads(path.read_text())]


def format_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "B":
        return f"{v / GB:.2f} GB"
    return f"{v:.3g} {unit}".strip()


def print_table(rows: list[Row], file=sys.stdout) -> None:
    head = ("area", "figure", "ours", "baseline", "ratio", "target", "verdict", "note")
    lines = []
    for r in rows:
        target = "" if r.target is None else (
            f"<= {format_value(r.target, r.unit)}" if r.absolute else f"<= {r.target:.2f}x")
        lines.append((r.area, r.figure, format_value(r.ours, r.unit), format_value(r.baseline, r.unit),
                      "" if r.ratio is None else f"{r.ratio:.3f}x", target, r.verdict, r.note))
    print_grid(head, lines, file)


def print_grid(head, lines, file=sys.stdout) -> None:
    """Columns padded to their widest cell, ``|`` between them; the last (the note) left unpadded."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    widths[-1] = 0
    fmt = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    print(fmt(head), file=file)
    print("-|-".join("-" * max(w, 4) for w in widths), file=file)
    for line in lines:
        print(fmt(line), file=file)
    file.flush()


# ---------------------------------------------------------------- subprocesses


def run_child(module: str, args: list[str], env: dict | None = None, timeout: float = 1800,
              cwd: Path | None = None) -> tuple[list[Row], int]:
    """Run ``python -m module args --out json`` in a fresh process in ``cwd`` (a checkout: the repository, or a
    worktree of another revision for ``--compare``); its rows."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", module, *args, "--out", str(out)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd or REPO, env={**os.environ, **(env or {})}, timeout=timeout)
    took = time.monotonic() - started
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    rows = read_rows(out)
    out.unlink(missing_ok=True)
    print(f"[bench] {module} {' '.join(args)}: {took:.0f}s", file=sys.stderr, flush=True)
    return rows, 0


# ---------------------------------------------------------------- the predictor under bench


def use_weights(size: str, refiner: bool = True) -> str:
    """Set SDXL_WEIGHTS for ``size`` ("tiny" or "full", generating the full set once) and return it."""
    if size == "tiny":
        os.environ["SDXL_WEIGHTS"] = "tiny"
    else:
        from . import full_weights

        os.environ["SDXL_WEIGHTS"] = str(full_weights.make(refiner=refiner, log=lambda m: print(m, file=sys.stderr)))
    return os.environ["SDXL_WEIGHTS"]


def cpu_dtype(size: str):
    """On the CPU the predictor computes in fp32; full-size SDXL in fp32 (~14 GB for the base alone) does not fit
    the bench's RAM budget, so full-size runs compute in bf16 (this CPU has avx512_bf16), ours and baseline alike."""
    import torch

    return torch.float32 if size == "tiny" else torch.bfloat16


def force_dtype(dtype) -> None:
    """Make sdxl.models.pick_device choose ``dtype`` on the CPU (a bench-only patch; the GPU keeps its choice)."""
    import torch

    import sdxl.models as models

    original = models.pick_device

    def pick_device():
        device, chosen = original()
        return (device, chosen) if device == "cuda" else ("cpu", dtype)

    models.pick_device = pick_device
    _ = torch


def make_predictor(size: str, device: str, compile: bool = False):
    """A set-up Predictor on ``size`` weights, tuned for ``device``; the predictor's logging quietened.

    Full size on the CPU: setup() loads the fp16 files as fp16 (as on a GPU: no conversion, so no 2x transient),
    then each module is cast to bf16 in place, one tensor at a time (fp16 CPU kernels are slow; bf16 has
    avx512_bf16 here). The baseline pipelines share these modules, so both sides compute in bf16."""
    import logging

    import torch

    if device == "cuda":
        assert torch.cuda.is_available(), "--device cuda: no GPU visible"
        # the product's own fast path (sdxl/acceleration.py) tunes the shared modules; --compile is its opt-in
        os.environ["SDXL_COMPILE"] = "1" if compile else "0"
    else:
        force_dtype(torch.float32 if size == "tiny" else torch.float16)
    from predict import Predictor

    p = Predictor()
    p.setup()
    logging.getLogger().setLevel(logging.WARNING)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "No LoRA keys associated to CLIPTextModel ..." on every LoRA load
    if size == "full" and device != "cuda":
        m = p.models
        for module in (m.base.unet, m.base.vae, m.base.text_encoder, m.base.text_encoder_2, m.refiner.unet,
                       m.safety.model):
            module.to(dtype=torch.bfloat16)
        m.dtype = m.safety.dtype = torch.bfloat16
    return p


_PEAK_ANON = [0]


def rss_guard(limit_bytes: float | None = None) -> None:
    """Exit this process (code 86, with a message) if its RSS passes ``limit_bytes`` (default $BENCH_RSS_LIMIT_GB,
    13 GB): the machine is shared, and an OOM kill would take other people's processes down with ours.
    Also records the peak anonymous memory (``peak_anon``)."""
    import threading

    limit = limit_bytes or float(os.environ.get("BENCH_RSS_LIMIT_GB", "13")) * GB

    def watch():
        while True:
            used = _rss_anon()  # anonymous memory: file-backed pages (mmap'd weights) are reclaimable
            _PEAK_ANON[0] = max(_PEAK_ANON[0], used)
            if used > limit:
                print(f"[bench] RSS {used / GB:.1f} GB passed the limit of {limit / GB:.1f} GB: exiting",
                      file=sys.stderr, flush=True)
                os._exit(86)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True, name="rss-guard").start()


class MemoryCgroup:
    """A memory cgroup of this machine limited to ``limit`` bytes (page cache included, which the kernel reclaims
    under the limit, as on a machine with that much RAM): ``wrap(cmd)`` runs a command in it, ``peak()`` is the
    cgroup's peak usage, ``close()`` removes it. ``make`` returns None where the sandbox allows none (cgroup v1
    ``memory`` or a cgroup v2 with the memory controller, writable: root)."""

    def __init__(self, path: Path, v1: bool):
        self.path, self.v1 = path, v1

    @classmethod
    def make(cls, limit: int) -> MemoryCgroup | None:
        roots = [(Path("/sys/fs/cgroup/memory"), True), (Path("/sys/fs/cgroup/unified"), False),
                 (Path("/sys/fs/cgroup"), False)]
        for root, v1 in roots:
            if v1 != (root / "memory.limit_in_bytes").exists():
                continue
            if not v1 and "memory" not in _read(root / "cgroup.subtree_control").split():
                continue
            path = root / f"bench-{os.getpid()}"
            try:
                path.mkdir(exist_ok=True)
                (path / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(int(limit)))
                return cls(path, v1)
            except OSError:
                _try_rmdir(path)
        return None

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *cmd]

    def peak(self) -> int:
        return int(_read(self.path / ("memory.max_usage_in_bytes" if self.v1 else "memory.peak")) or 0)

    def close(self) -> None:
        _try_rmdir(self.path)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _try_rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def peak_anon() -> int:
    """The largest anonymous (not file-backed) RSS the guard saw, polled every 50 ms; 0 without rss_guard()."""
    return max(_PEAK_ANON[0], _rss_anon())


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return rss()
