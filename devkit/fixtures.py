"""Fixtures shared by several test folders (registered in tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from devkit.oracle import DEFAULTS


@pytest.fixture(scope="session")
def predictor():
    """One set-up predictor per test process (tiny weights)."""
    from predict import Predictor

    p = Predictor()
    p.setup()
    return p


@pytest.fixture(scope="session")
def run(predictor):
    """Call predict() with devkit.oracle.DEFAULTS overridden; returns the images as uint8 arrays."""

    def _run(**overrides):
        paths = predictor.predict(**{**DEFAULTS, **overrides})
        return [np.array(Image.open(p)) for p in paths]

    return _run
