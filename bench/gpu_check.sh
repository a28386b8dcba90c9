#!/usr/bin/env bash
# One prepared run of every GPU measurement (under 5 minutes on one GPU); prints one table last:
# the full preset's dive end -> score through the torch backend (fp32, bf16, fp16, CUDA graphs,
# channels-last) with peak memory and drift against onnxruntime fp32, and training steps/s with AMP.
# Usage (from the repository root, on the GPU machine): bash bench/gpu_check.sh [--runs N] [--no-onnx]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
timeout 280 "$PYTHON" bench/gpu_check.py "$@"
