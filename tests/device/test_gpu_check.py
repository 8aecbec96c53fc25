"""``scripts/gpu-check.sh --smoke``: the GPU check's every section runs (tiny weights, CPU) and writes its table."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_writes_the_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", "scripts/gpu-check.sh", "--smoke"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = (tmp_path / "gpu-check.md").read_text()
    assert "FAILED" not in table
    for expected in ("txt2img", "img2img", "inpaint", "expert_ensemble_refiner", "base_image_refiner",
                     "ours compiled / plain diffusers eager", "switch to another LoRA", "back to base",
                     "LoRA: 1 steps", "full fine-tune: 1 steps"):
        assert expected in table, expected
