"""Hypothesis-driven fuzzing of archive intake, image decoding and predict requests (see ``fuzz.targets``).

``python -m fuzz --seconds 300`` runs every target for a share of the budget; the pytest suite runs
the same targets with a few examples each (tests/hostile/test_fuzz_smoke.py).
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from .targets import TARGETS, Finding, small_limits

__all__ = ["TARGETS", "Finding", "Result", "run"]


@dataclass
class Result:
    target: str
    examples: int = 0
    seconds: float = 0.0
    finding: str | None = None  # the shrunk failure's message and traceback
    finding_input: bytes | None = None
    saved_to: Path | None = None
    outcomes: dict[str, int] = field(default_factory=dict)


def run(name: str, *, seconds: float | None = None, max_examples: int = 50, seed: int | None = None,
        findings_dir: Path | None = None, chunk: int = 100) -> Result:
    """Run target ``name`` for ``seconds`` (in chunks of ``chunk`` examples) or for ``max_examples``.

    Stops at the first finding (after Hypothesis shrank it); the minimal input is kept in the
    result and, when ``findings_dir`` is given, saved there as ``<target>-<sha1>.bin``.
    """
    target, strategy = TARGETS[name]
    result = Result(name)
    rng = random.Random(seed)
    last_bad: list[bytes] = []

    def checked(data: bytes) -> None:
        result.examples += 1
        try:
            target(data)
        except Finding:
            last_bad[:] = [data]
            raise

    start = time.monotonic()
    deadline = start + seconds if seconds is not None else None
    with small_limits():
        while True:
            n = chunk if deadline is not None else max_examples
            test = settings(
                max_examples=n, deadline=None, database=None, derandomize=False,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )(given(strategy)(checked))
            test = hypothesis_seed(rng.getrandbits(64))(test)
            try:
                test()
            except Finding as e:
                result.finding = "".join(traceback.format_exception_only(type(e), e)).strip()
                if e.__cause__ is not None:
                    result.finding += "\n" + "".join(traceback.format_exception(e.__cause__)).strip()
                result.finding_input = last_bad[0] if last_bad else None
                break
            if deadline is None or time.monotonic() >= deadline:
                break
    result.seconds = time.monotonic() - start
    if result.finding_input is not None and findings_dir is not None:
        findings_dir.mkdir(parents=True, exist_ok=True)
        raw = result.finding_input if isinstance(result.finding_input, bytes) else repr(result.finding_input).encode()
        digest = hashlib.sha1(raw).hexdigest()[:12]
        result.saved_to = findings_dir / f"{name}-{digest}.bin"
        data = result.finding_input
        result.saved_to.write_bytes(data if isinstance(data, bytes) else repr(data).encode())
    return result


def default_findings_dir() -> Path:
    return Path(tempfile.gettempdir()) / "sdxl-fuzz-findings"
