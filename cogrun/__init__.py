"""Run this Cog model without the cog CLI or Docker.

- ``cogrun.schema``: writes ``.cog/openapi_schema.json`` as ``cog build`` would (coglet validates requests with it).
- ``cogrun.serve``: starts the real runtime (coglet) from the repository root, in predict or train mode.
- ``cogrun.client``: a ``cog predict``-style command line talking to a running (or self-started) server.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / ".cog" / "openapi_schema.json"
