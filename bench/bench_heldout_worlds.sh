#!/usr/bin/env bash
# Judge a FineParser checkpoint on worlds it never saw, beside the trivial guesses.
#   bash bench/bench_heldout_worlds.sh CKPT [SEEDS] [DIVES]
# For each world seed (default "1 2"; the demo model trains on seed 0) a synthetic set of DIVES dives
# (default 120) is rendered once into runs/heldout/seed-N; the checkpoint is evaluated on all of its
# test dives with that world's train split as the exemplars.  One row per world: Spearman rho and the
# exemplar-mean baseline, AIoU@0.75 and the constant transition guess's, and the transition error in
# frames of the 96 (median, share within 1 and 2; then the median of each transition alone: the take-off's
# end, the entry's start) of the model and of the constant guess fitted on that world's train split.  The table is also written to runs/heldout/<checkpoint run>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CKPT=${1:?usage: bench/bench_heldout_worlds.sh CKPT [SEEDS] [DIVES]}
SEEDS=${2:-1 2}
DIVES=${3:-120}
WORK=${WORK:-runs/heldout}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
records=()
for seed in $SEEDS; do
  data="$WORK/seed-$seed-$DIVES"
  # Rendered once per world version: a cached set of another version is rendered again.
  if ! $PY -c "import json,sys; from synth.dataset import SYNTH_VERSION as v; sys.exit(json.load(open('$data/synth.json'))['version'] != v)" 2>/dev/null; then
    $PY -m synth --out "$data" --dives "$DIVES" --seed "$seed" --workers 2 --quiet --overwrite
  fi
  out="$WORK/eval-$(basename "$(dirname "$CKPT")")-$(basename "$CKPT" .pt)-seed-$seed"
  rm -rf "$out"
  $PY -m train --config configs/synthetic_tiny.yaml --data-root "$data" --out "$out" --eval-only "$CKPT" \
      eval_max_queries=0 > "$out.log" 2>&1 || { tail -5 "$out.log"; exit 1; }
  records+=("$seed=$out/metrics.jsonl")
done
$PY - "$CKPT" "${records[@]}" <<'PYEOF' | tee "$WORK/$(basename "$(dirname "$CKPT")").txt"
import json, sys
print(f"checkpoint {sys.argv[1]}: held-out worlds, all test dives (transition errors in frames of the 96)")
head = (f"{'world':>6}{'dives':>6}{'rho':>7}{'mean':>7}{'AIoU75':>8}{'guess':>7}"
        f"{'tr med':>8}{'<=1':>6}{'<=2':>6}{'guess med':>10}{'<=1':>6}{'<=2':>6}"
        f"{'1st / 2nd':>11}{'guess':>11}")
print(head)
for arg in sys.argv[2:]:
    seed, path = arg.split("=", 1)
    r = [json.loads(l) for l in open(path) if '"eval"' in l][-1]
    print(f"{seed:>6}{r['eval_dives']:>6}{r['rho']:>7.3f}{r['baseline_rho']:>7.3f}{r['aiou_75']:>8.3f}"
          f"{r['guess_aiou_75']:>7.3f}{r['tr_median']:>8.1f}{r['tr_within_1']:>6.2f}{r['tr_within_2']:>6.2f}"
          f"{r['guess_tr_median']:>10.1f}{r['guess_tr_within_1']:>6.2f}{r['guess_tr_within_2']:>6.2f}"
          f"{r['tr_median_1']:>6.1f} /{r['tr_median_2']:>4.1f}{r['guess_tr_median_1']:>6.1f} /{r['guess_tr_median_2']:>4.1f}")
PYEOF
