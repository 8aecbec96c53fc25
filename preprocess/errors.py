"""The one exception the preprocessing raises for bad inputs."""

from __future__ import annotations


class PreprocessError(ValueError):
    """A training input that cannot be used; the message names the input and says why."""
