"""A stand-in for the ``cog`` SDK where it is not installed (the GPU check machine: no Cog runtime there).

Only what predict.py imports: a base class, ``Input`` (the declared default) and ``Path``. The device
tests call ``Predictor.setup()`` and ``predict(...)`` directly, with every input given.
"""

from pathlib import Path  # noqa: F401


class BaseRunner:
    pass


def Input(default=None, **_):  # noqa: N802 (cog's spelling)
    return default
