"""Suite-wide set-up: every test runs on the tiny generated weights (SDXL_WEIGHTS=tiny).

The tiny sets are generated once into the user cache (~/.cache/cog-sdxl/tiny) and reused by every
later run; generation is atomic, so parallel workers cannot see a half-written set.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["devkit.fixtures"]  # predictor, run

os.environ["SDXL_WEIGHTS"] = "tiny"
os.environ["SDXL_BACKEND"] = "torch"  # the oracle tests compare torch bitwise; OpenVINO tests opt in per fixture
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# One intra-op thread, in the tests and in the servers they start (inherited through the
# environment): under xdist a worker per core makes more threads only fight over the cores, and
# alone (`pytest tests/x.py`) the bitwise comparisons between two server processes need it too -
# with 2 threads some CPU kernels split their work by timing, and a pixel can differ by one level.
os.environ["OMP_NUM_THREADS"] = "1"
# MKL's results may differ in the last bit with the memory alignment of a matmul's input, i.e. with
# the allocator's history: after a LoRA was loaded and unloaded (weights bitwise the base's) one pixel
# of a batch could differ by one level. Conditional numerical reproducibility makes them alignment-free.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_sessionstart(session):
    """Tests name trained weights by their path under pytest's temporary folders: the operator's opt-in
    (SDXL_LOCAL_WEIGHTS_DIR, see weights/sources.py) allows exactly that folder, for the in-process
    predictor and the servers tests start (they inherit the environment). Tests of the refusal start
    their own servers without it."""
    basetemp = session.config._tmp_path_factory.getbasetemp()
    os.environ.setdefault("SDXL_LOCAL_WEIGHTS_DIR", str(basetemp))
