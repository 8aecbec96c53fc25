#!/usr/bin/env bash
# The GPU check (issue 9; bench/gpu_check.py says what it measures). One markdown table: $OUT/gpu-check.md
# when OUT is set, else bench/results/gpu-check.md.
#
#   bash scripts/gpu-check.sh --fetch-wheels   # here, with PyPI: the pure-Python wheels the GPU machine lacks -> .whl/
#   bash scripts/gpu-check.sh                  # on a machine with one NVIDIA GPU, no network (under 8 minutes)
#   bash scripts/gpu-check.sh --smoke          # anywhere: tiny weights on the CPU (under 3 minutes; a test runs it)
#
# On the GPU machine the script runs with the python3 it finds there (its own torch, transformers, peft,
# accelerate); what is missing (diffusers, invisible-watermark and its PyWavelets) is installed from .whl/
# into a private folder, offline. It needs neither the Cog runtime (tests/device has a stub of the cog SDK)
# nor the preprocess models' packages beyond what is there (mediapipe tests are skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 invisible-watermark==0.2.0 PyWavelets==1.9.0)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    ls -la .whl
    exit 0
fi

if [[ "${1:-}" == "--smoke" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    [[ -x "$PY" ]] || PY=python3
    export SDXL_WEIGHTS=tiny
    exec "$PY" -m bench.gpu_check --smoke
fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import diffusers" 2>/dev/null; then
    [[ -d .whl ]] || { echo "gpu-check: diffusers is not installed and .whl/ is missing: run --fetch-wheels first" >&2; exit 2; }
    site=$(mktemp -d /tmp/gpu-check-site.XXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SDXL_TINY_DIR=${SDXL_TINY_DIR:-/tmp/gpu-check-tiny}
exec "$PY" -m bench.gpu_check "$@"
