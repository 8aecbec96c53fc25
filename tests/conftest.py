"""Suite-wide set-up: every test runs on the tiny generated weights (SDXL_WEIGHTS=tiny).

The tiny sets are generated once into the user cache (~/.cache/cog-sdxl/tiny) and reused by every
later run; generation is atomic, so parallel workers cannot see a half-written set.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["helpers.fixtures"]  # predictor, run

os.environ["SDXL_WEIGHTS"] = "tiny"
os.environ["SDXL_BACKEND"] = "torch"  # the oracle tests compare torch bitwise; OpenVINO tests opt in per fixture
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one pytest worker per core: intra-op threads on top of that only fight over the cores
    # (the servers the tests start inherit the setting through the environment)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
