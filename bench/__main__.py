"""Run every benchmark, each heavy part in its own process, and print one table of ratios.

    .venv/bin/python -m bench            # tiny + full size (generates full-size random SDXL weights once)
    .venv/bin/python -m bench --quick    # tiny weights only
    .venv/bin/python -m bench --device cuda [--compile]
    .venv/bin/python -m bench --fixes    # the same, with the fixes proposed in bench/README.md applied as patches
"""

from __future__ import annotations

import argparse
import sys
import time

from . import common
from .common import Row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny weights only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fixes", action="store_true", help="apply bench/fixes.py (the proposed fixes)")
    ap.add_argument("--both", action="store_true", help="full size: run cold start and LoRA without and with --fixes")
    ap.add_argument("--no-full-refiner", action="store_true", help="full size without the full-size refiner")
    a = ap.parse_args(argv)
    common_args = ["--device", a.device] + (["--compile"] if a.compile else []) + (["--fixes"] if a.fixes else [])
    started = time.monotonic()
    rows: list[Row] = []

    def part(module: str, args: list[str]) -> None:
        try:
            got, _ = common.run_child(module, [*common_args, *args])
            rows.extend(got)
        except Exception as e:  # one failed part does not lose the others
            rows.append(Row(module.split(".")[-1], " ".join(args), None, None, note=f"FAILED: {e}"[:200]))

    part("bench.predict_overhead", ["--size", "tiny", "--lora"] + (["--quick"] if a.quick else []))
    part("bench.cold_start", ["--size", "tiny", "--quick"])
    if not a.quick:
        free = common.free_ram()
        refiner = not a.no_full_refiner and free > 15 * common.GB
        if not refiner and not a.no_full_refiner:
            rows.append(Row("predict/full", "full-size refiner", None, None,
                            note=f"left out: {free / common.GB:.1f} GB RAM available, it needs ~15 GB with the base"))
        common.use_weights("full", refiner=refiner)  # generate once, outside the timed children
        size = ["--size", "full"] + ([] if refiner else ["--no-refiner"])
        part("bench.cold_start", ["--size", "full"])
        part("bench.predict_overhead", size + ["--lora"])
        if a.both and not a.fixes:
            common_args.append("--fixes")
            n = len(rows)
            part("bench.cold_start", ["--size", "full"])
            part("bench.lora", ["--size", "full"])
            for r in rows[n:]:
                r.figure += " [fixes]"
    print(f"\nbench: {time.monotonic() - started:.0f}s on {a.device}"
          f"{' (quick: tiny only)' if a.quick else ''}{' with --fixes' if a.fixes else ''}\n")
    common.print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
