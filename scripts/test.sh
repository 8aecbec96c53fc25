#!/usr/bin/env bash
# The test suite (tiny generated weights, no GPU, no network). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export SDXL_WEIGHTS=tiny
# generate the tiny weight sets once, before the parallel workers start
.venv/bin/python -m weights > /dev/null
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
