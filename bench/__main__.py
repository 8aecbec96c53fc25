"""Run every benchmark, each heavy part in its own process, and print one table of ratios.

    .venv/bin/python -m bench                      # tiny + full size (generates full-size random SDXL weights once)
    .venv/bin/python -m bench --quick              # tiny weights only
    .venv/bin/python -m bench --only cold:full,lora:full
    .venv/bin/python -m bench --compare REV [--against HEAD] [--only ...]   # the same bench code on two revisions
    .venv/bin/python -m bench --device cuda [--compile]

``--compare REV`` checks REV and ``--against`` (default HEAD) out as git worktrees in a temporary directory outside
the repository, puts THIS checkout's bench/ (and devkit/, the baselines) into both, runs each selected part on
both (interleaved: before, after, before, after, ...), removes the worktrees, and prints the figures side by side with
the after/before ratio of our time. Nothing is patched: "before" is the code as it was at REV.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common
from .common import Row

# part name -> (module, args); the default selection runs them all in this order
PARTS = {
    "predict:tiny": ("bench.predict_overhead", ["--size", "tiny", "--lora"]),  # with lora:tiny on the same predictor
    "cold:tiny": ("bench.cold_start", ["--size", "tiny", "--quick"]),
    "train:tiny": ("bench.training", ["--size", "tiny"]),
    "cold:full": ("bench.cold_start", ["--size", "full"]),
    "predict:full": ("bench.predict_overhead", ["--size", "full", "--lora"]),  # with lora:full
    "train:full": ("bench.training", ["--size", "full"]),
    # the OpenVINO CPU backend against torch fp32 (bench/openvino.py); only on request
    "openvino:tiny": ("bench.openvino", ["--size", "tiny"]),
    "openvino:full": ("bench.openvino", ["--size", "full"]),
    # only on request (already inside predict:*)
    "lora:tiny": ("bench.lora", ["--size", "tiny"]),
    "lora:full": ("bench.lora", ["--size", "full"]),
    "fewstep:tiny": ("bench.fewstep", ["--size", "tiny"]),  # SDXL-Turbo 1 step vs SDXL 30 steps
    "fewstep:full": ("bench.fewstep", ["--size", "full"]),
}
DEFAULT = ["predict:tiny", "cold:tiny", "train:tiny", "cold:full", "predict:full", "train:full"]


def selection(a) -> list[str]:
    names = a.only.split(",") if a.only else [n for n in DEFAULT if not (a.quick and n.endswith(":full"))]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    return names


def worktree(rev: str, parent: Path) -> Path:
    """A detached worktree of ``rev`` under ``parent`` with this checkout's bench/ and devkit/ in it."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=common.REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    path = parent / sha[:10]
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), sha], cwd=common.REPO, check=True)
    ignore = shutil.ignore_patterns("__pycache__", "results")
    for sub in ("bench", "devkit"):
        shutil.rmtree(path / sub, ignore_errors=True)
        shutil.copytree(common.REPO / sub, path / sub, ignore=ignore)
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=common.REPO, check=False)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=common.REPO, check=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny weights only")
    ap.add_argument("--only", help=f"comma-separated parts: {', '.join(PARTS)}")
    ap.add_argument("--compare", metavar="REV", help="run the selected parts on REV and on --against, side by side")
    ap.add_argument("--against", default="HEAD", metavar="REV", help="with --compare: the 'after' revision")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-full-refiner", action="store_true", help="full size without the full-size refiner")
    a = ap.parse_args(argv)
    names = selection(a)
    common_args = ["--device", a.device] + (["--compile"] if a.compile else [])
    started = time.monotonic()
    rows: list[Row] = []
    info: list[str] = []

    if any(n.endswith(":full") for n in names):
        free = common.free_ram()
        refiner = not a.no_full_refiner and free > 15 * common.GB
        if not refiner:
            why = "--no-full-refiner" if a.no_full_refiner else f"{free / common.GB:.1f} GB RAM available, it needs ~15 GB"
            info.append(f"full-size refiner left out ({why}): refiner modes are measured on tiny only")
        common.use_weights("full", refiner=refiner)  # generate once, outside the timed children
        for n in names:
            if n.endswith(":full") and not refiner and PARTS[n][0] == "bench.predict_overhead":
                PARTS[n] = (PARTS[n][0], PARTS[n][1] + ["--no-refiner"])

    def part(name: str, cwd: Path) -> list[Row]:
        module, args = PARTS[name]
        try:
            return common.run_child(module, [*common_args, *args], cwd=cwd)[0]
        except Exception as e:  # one failed part does not lose the others
            return [Row(name.split(":")[0] + "/" + name.split(":")[1], " ".join(args), None, None,
                        note=f"FAILED: {e}"[:300])]

    if not a.compare:
        for name in names:
            rows += part(name, common.REPO)
        print(f"\nbench: {time.monotonic() - started:.0f}s on {a.device}{' (quick: tiny only)' if a.quick else ''}; "
              f"parts: {', '.join(names)}; load average {load_average()}\n")
        for line in info:
            print(f"note: {line}")
        common.print_table(rows)
        return 0

    parent = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    trees = {}
    try:
        trees = {"before": worktree(a.compare, parent), "after": worktree(a.against, parent)}
        got: dict[str, list[Row]] = {"before": [], "after": []}
        for name in names:
            for side, path in trees.items():
                print(f"[bench] {name} on {side} ({path.name})", file=sys.stderr, flush=True)
                got[side] += part(name, path)
    finally:
        for path in trees.values():
            remove_worktree(path)
        shutil.rmtree(parent, ignore_errors=True)
    print(f"\nbench --compare: {time.monotonic() - started:.0f}s on {a.device}; before = {a.compare} "
          f"({trees['before'].name}), after = {a.against} ({trees['after'].name}); parts: {', '.join(names)}; "
          f"load average {load_average()}\n")
    for line in info:
        print(f"note: {line}")
    print_compare(got["before"], got["after"])
    return 0


def load_average() -> str:
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def print_compare(before: list[Row], after: list[Row], file=sys.stdout) -> None:
    """One line per figure: before (ours, ratio), after (ours, ratio), after/before of ours."""
    fmt = common.format_value
    index = {(r.area, r.figure): r for r in before}
    keys = [(r.area, r.figure) for r in after] + [k for k in index if k not in {(r.area, r.figure) for r in after}]
    by_after = {(r.area, r.figure): r for r in after}
    head = ("area", "figure", "before: ours", "ratio", "verdict", "after: ours", "ratio", "verdict",
            "after/before (ours)", "note")
    lines = []
    for k in keys:
        b, f = index.get(k), by_after.get(k)
        cells = list(k)
        for r in (b, f):
            cells += ["-", "", ""] if r is None else [fmt(r.ours, r.unit),
                                                      "" if r.ratio is None else f"{r.ratio:.3f}x", r.verdict]
        change = ""
        if b is not None and f is not None and b.ours and f.ours is not None and (b.unit != "s" or b.ours > 1e-3):
            change = f"{f.ours / b.ours:.3f}x"
        note = f.note if f is not None else ""
        if b is not None and b.note != note:
            note = f"before: {b.note} || after: {note}"
        cells += [change, note]
        lines.append(cells)
    common.print_grid(head, lines, file)


if __name__ == "__main__":
    sys.exit(main())
