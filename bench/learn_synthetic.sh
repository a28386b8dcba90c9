#!/usr/bin/env bash
# Learn the synthetic world on this machine's CPUs and report how well the held-out split is scored.
#   bash bench/learn_synthetic.sh [DIVES] [EPOCHS] [extra key=value overrides...]
# Generates DIVES dives (default 300), trains configs/synthetic_tiny.yaml for EPOCHS epochs (default 5)
# with 2 CPU threads, evaluates best.pt on the whole test split, prints rho and AIoU beside their trivial
# baselines (exemplar mean, constant transition guess), the transition error in frames, and minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIVES=${1:-300}
EPOCHS=${2:-5}
shift $(( $# > 2 ? 2 : $# ))
WORK=${WORK:-runs/learn_synthetic}
DATA="$WORK/data"
RUN="$WORK/run"
start=$(date +%s)
if [ ! -f "$DATA/synth.json" ]; then
  $PY -m synth --out "$DATA" --dives "$DIVES" --seed 0 --workers 2 --quiet
fi
gen_done=$(date +%s)
rm -rf "$RUN"
$PY -m train --config configs/synthetic_tiny.yaml --data-root "$DATA" --out "$RUN" epochs="$EPOCHS" "$@"
train_done=$(date +%s)
$PY -m train --config configs/synthetic_tiny.yaml --data-root "$DATA" --out "$RUN/final_eval" \
    --eval-only "$RUN/best.pt" eval_max_queries=0 > "$WORK/final_eval.txt"
$PY - "$RUN/final_eval/metrics.jsonl" "$gen_done" "$start" "$train_done" <<'PYEOF'
import json, sys, time
rec = [json.loads(l) for l in open(sys.argv[1]) if '"eval"' in l][-1]
gen_done, start, train_done = (int(x) for x in sys.argv[2:5])
print(f"learn_synthetic: rho {rec['rho']:.3f} (exemplar-mean baseline {rec['baseline_rho']:.3f})  "
      f"AIoU@0.5 {rec['aiou_50']:.3f}  AIoU@0.75 {rec['aiou_75']:.3f} (constant guess {rec['guess_aiou_75']:.3f})  "
      f"L2 {rec['l2']:.2f}  test dives {rec['eval_dives']}  training {(train_done - gen_done) / 60:.1f} min  "
      f"total {(time.time() - start) / 60:.1f} min")
print(f"learn_synthetic: transitions median error {rec['tr_median']:.1f} frames of the 96, "
      f"{rec['tr_within_1']:.0%} within 1, {rec['tr_within_2']:.0%} within 2; constant guess (train split) "
      f"{rec['guess_tr_median']:.1f}, {rec['guess_tr_within_1']:.0%}, {rec['guess_tr_within_2']:.0%}")
PYEOF
