"""The one error of the weights package: trained weights that cannot be used, blaming the input they came from.

The message always starts with the input's name (``replicate_weights: ...``, ``COG_WEIGHTS: ...``) and
says what is accepted; coglet shows it to the user as it is. It never quotes a server file's bytes or
a server directory's listing (see weights/sources.py).
"""

from __future__ import annotations


class WeightsError(ValueError):
    """Weights named by the input ``input_name`` cannot be fetched, unpacked or read."""

    def __init__(self, input_name: str, message: str):
        super().__init__(f"{input_name}: {message}")
        self.input_name = input_name


class DownloadError(WeightsError):
    """A URL could not be downloaded (HTTP error, stalled or dropped connection, over the size limit)."""


class ArchiveError(WeightsError):
    """A tar that cannot be used (corrupt, unsafe member, bomb, no room)."""
