"""Run this Cog model without the cog CLI or Docker.

- ``cogrun.schema``: writes ``.cog/openapi_schema.json`` as ``cog build`` would (coglet validates requests with it).
- ``cogrun.serve``: starts the real runtime (coglet) from the repository root, in predict or train mode.
- ``cogrun.client``: a ``cog predict``-style command line talking to a running (or self-started) server.

Each takes ``--config``: ``cog.yaml`` (SDXL) or another Cog config of this repository (``cog.turbo.yaml``:
the few-step model), as ``cog build -f`` does.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / ".cog" / "openapi_schema.json"
DEFAULT_CONFIG = "cog.yaml"


def schema_path(config: str = DEFAULT_CONFIG) -> Path:
    """The committed schema of a Cog config: ``.cog/openapi_schema.json`` for cog.yaml,
    ``.cog/<name>/openapi_schema.json`` for ``cog.<name>.yaml``."""
    name = Path(config).name
    if name == DEFAULT_CONFIG:
        return SCHEMA_PATH
    middle = name.removeprefix("cog.").removesuffix(".yaml").removesuffix(".yml")
    return REPO_ROOT / ".cog" / middle / "openapi_schema.json"
