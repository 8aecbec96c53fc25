"""``python -m fuzz [--seconds 300] [--target NAME ...] [--seed N]``: fuzz every target for a fixed budget.

The budget is split evenly between the targets. Exit status 1 when a target broke its contract;
the minimal input is saved under --findings (default: $TMPDIR/sdxl-fuzz-findings).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("SDXL_WEIGHTS", "tiny")

from fuzz import TARGETS, default_findings_dir, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="total budget (default: %(default)s)")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="default: all")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--findings", type=Path, default=default_findings_dir())
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # skipped-image warnings would flood the output
    warnings.simplefilter("ignore")
    names = args.target or sorted(TARGETS)
    share = args.seconds / len(names)
    failed = 0
    print(f"fuzzing {len(names)} target(s) for {args.seconds:.0f}s ({share:.0f}s each)", flush=True)
    for name in names:
        result = run(name, seconds=share, seed=args.seed, findings_dir=args.findings)
        rate = result.examples / max(result.seconds, 1e-9)
        status = "FINDING" if result.finding else "ok"
        print(f"{name:16s} {status:8s} {result.examples:7d} examples in {result.seconds:6.1f}s ({rate:.0f}/s)", flush=True)
        if result.finding:
            failed += 1
            shown = result.finding_input if isinstance(result.finding_input, bytes) else repr(result.finding_input)
            print(f"  input ({len(shown or b'')} bytes): {(shown or b'')[:200]!r}")
            print(f"  saved to {result.saved_to}")
            print("  " + result.finding.replace("\n", "\n  "))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
