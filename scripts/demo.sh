#!/usr/bin/env bash
# The main job on the embedded default: one prediction through the real Cog runtime (coglet),
# on tiny generated weights (they make noise, not pictures). Writes outputs/output.0.png.
# Extra arguments are passed on, e.g.: bash scripts/demo.sh -i prompt="a red dog" -i num_outputs=2
# On a CPU, SDXL_BACKEND=openvino bash scripts/demo.sh runs the UNets, VAE and text encoders with OpenVINO
# (converted once, cached beside the weights; int8 UNets and text encoders, SDXL_OPENVINO_WEIGHTS=fp32 for uncompressed ones).
# Real SDXL on a CPU: SDXL_BACKEND=openvino SDXL_WEIGHTS=huggingface bash scripts/demo.sh (README.md, "CPU: OpenVINO").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export SDXL_WEIGHTS=${SDXL_WEIGHTS:-tiny}
if [ $# -eq 0 ]; then
  set -- -i prompt="An astronaut riding a rainbow unicorn" -i width=256 -i height=256 -i num_inference_steps=20
fi
exec .venv/bin/python -m cogrun.client -o outputs "$@"
