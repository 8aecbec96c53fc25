"""The fuzz targets (fuzz/) with a small budget, as part of the normal suite; ``python -m fuzz`` runs them longer."""

import logging

import pytest

from fuzz import TARGETS, run

EXAMPLES = {"archive_intake": 250, "predict_image": 500, "predict_mask": 250, "training_image": 400}  # ~20 s in all


def test_every_fuzz_target_is_run_by_the_suite():
    # predict_request's suite counterpart runs through coglet: tests/runtime/test_request_property.py
    assert set(TARGETS) == set(EXAMPLES) | {"predict_request"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fuzz_target_small_budget(name, caplog):
    caplog.set_level(logging.ERROR)
    result = run(name, max_examples=EXAMPLES[name], seed=20240601)
    assert result.finding is None, f"{result.finding}\ninput: {result.finding_input!r}"
    assert result.examples >= EXAMPLES[name] // 2


def test_fuzz_cli_runs_for_its_budget(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fuzz", "--seconds", "2", "--target", "predict_image",
                           "--findings", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "predict_image" in done.stdout and " ok " in done.stdout
