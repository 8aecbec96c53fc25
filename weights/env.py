"""Operator settings read from the environment: one rule for a number that is missing or mistyped."""

from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
N = TypeVar("N", int, float)


def env_number(name: str, default: N, parse: Callable[[str], N]) -> N:
    """``parse(os.environ[name])``; ``default`` when it is unset or empty, and, with a warning naming
    the variable, when it does not parse (a typo in a deployment must not stop the server)."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        return parse(raw)
    except ValueError:
        log.warning("%s=%r is not a %s; using %s", name, raw, "whole number" if parse is int else "number", default)
        return default
