#!/usr/bin/env bash
# Create .venv (if needed) and install the pinned requirements into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned exactly (requirements.txt): on CPU machines pip takes the local CPU wheel
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  touch "$stamp"
fi
