#!/usr/bin/env bash
# One prepared run of every GPU measurement (under 5 minutes on one GPU); prints a short table last.
# Usage (from the repository root, on the GPU machine): bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
timeout 280 python bench/gpu_check.py
