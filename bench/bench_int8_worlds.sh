#!/usr/bin/env bash
# INT8 of a package as a user makes it, on several worlds: fineparser-calibrate --precision int8 with the
# defaults (32 calibration clips from each world's train split, every test clip held out), on a copy of PKG.
#   bash bench/bench_int8_worlds.sh [PKG] [WORLD ...]
# defaults: demo/package on runs/heldout/seed-1-120, runs/heldout/seed-2-120 (bench_heldout_worlds.sh makes
# them) and runs/demo-model/data (make demo-model).  Prints each drift table; exit 1 when a world missed the
# INT8 goals (calibration/drift.py GOALS), 0 when all met them.  Figures: docs/calibration.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PKG=${1:-demo/package}
shift || true
WORLDS=("$@")
[ ${#WORLDS[@]} -eq 0 ] && WORLDS=(runs/heldout/seed-1-120 runs/heldout/seed-2-120 runs/demo-model/data)
WORK=${WORK:-runs/bench_int8_worlds}
mkdir -p "$WORK"
status=0
for world in "${WORLDS[@]}"; do
  copy="$WORK/$(echo "$world" | tr '/' '_')"
  rm -rf "$copy" && cp -r "$PKG" "$copy"
  start=$(date +%s)
  $PY -m calibration "$copy" --data-root "$world" --precision int8 2>&1 | grep -E "^(variant|int8|transitions)"
  rc=${PIPESTATUS[0]}
  echo "$world: exit $rc, $(( $(date +%s) - start )) s"
  [ "$rc" -ne 0 ] && status=1
done
exit $status
