"""Suite-wide set-up: every test runs on the tiny generated weights (SDXL_WEIGHTS=tiny).

The tiny sets are generated once into the user cache (~/.cache/cog-sdxl/tiny) and reused by every
later run; generation is atomic, so parallel workers cannot see a half-written set.
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

os.environ["SDXL_WEIGHTS"] = "tiny"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def shared_dir(*parts: str) -> Path:
    """A folder of ../shared (real photos, Cog reference); skips the test where it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/{'/'.join(parts)} not present: it is only available beside the clone in CI")
    return path
