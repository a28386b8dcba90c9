#!/usr/bin/env bash
# FP16/INT8 variants of a random-weight package of one preset: calibrate, then time every variant.
#   bash bench/bench_calibration.sh [PRESET] [CALIB_CLIPS] [EVAL_CLIPS]      (defaults: tiny 8 16)
# Makes a small synthetic set (48 dives), a random-weight checkpoint of PRESET, exports it with a bank,
# runs fineparser-calibrate (fp16 + int8, --accept-drift: random weights have no goals to meet) and
# bench/bench_variants.py.  Drift of a random network says how the graphs convert, not how a trained
# model scores; the trained demo model's drift is in docs/calibration.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PRESET=${1:-tiny}
CLIPS=${2:-8}
EVAL=${3:-16}
WORK=${WORK:-runs/bench_calibration}
mkdir -p "$WORK"
if [ ! -f "$WORK/data/synth.json" ]; then
  $PY -m synth --out "$WORK/data" --dives 48 --seed 5 --workers 2 --quiet
fi
$PY - "$PRESET" "$WORK/$PRESET.pt" <<'PYEOF'
import sys, torch
from fineparser.checkpoint import save_checkpoint
from fineparser.config import FineParserConfig
from fineparser.model import FineParser
torch.manual_seed(0)
save_checkpoint(sys.argv[2], FineParser(FineParserConfig.preset(sys.argv[1])).eval())
PYEOF
start=$(date +%s)
$PY -m export "$WORK/$PRESET.pt" --out "$WORK/pkg_$PRESET" --data-root "$WORK/data" --exemplars-per-dive 3 \
    --no-masks-graph --parity-clips 1 2>&1 | grep -E "saved|ready|error" || true
exported=$(date +%s)
$PY -m calibration "$WORK/pkg_$PRESET" --data-root "$WORK/data" --clips "$CLIPS" --eval-clips "$EVAL" \
    --cache-dir "$WORK/cache" --accept-drift 2>&1 | grep -vE "it/s\]|Collecting|Finding|Number of|W:onnxruntime" | tail -8
calibrated=$(date +%s)
echo "bench_calibration $PRESET: export $((exported - start)) s, calibrate $((calibrated - exported)) s"
$PY bench/bench_variants.py "$WORK/pkg_$PRESET" --runs 5
