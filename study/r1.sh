#!/usr/bin/env bash
# The R1 study (docs/study/PLAN.md), part by part; every part continues from its records, so the
# script can be stopped and started again at any time (a run's record is written only when the
# run is complete). Usage: bash study/r1.sh [PART ...] (default: 1 2 3 4)
#   STUDY_DIR   where splits, generators and run folders go (default runs/study); not committed
#   JOBS        runs at a time (default 2), each with one torch thread
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DIR=${STUDY_DIR:-runs/study}
JOBS=${JOBS:-2}
ALL="real,real-steps,random,txt2img,actgen,actgen-balanced,actgen-balanced-train,actgen-mixed,actgen-class-balance,actgen-margin-scaled,actgen-repel,actgen-small-rounds"
R1=(--data builtin:digits --labeled-per-class 10 --train-config configs/train-study-digits-r1.yaml
    --build-config configs/build-study-digits.yaml --budget 16 --jobs "$JOBS" --threads 1)
export OMP_NUM_THREADS=1

study() { "$PY" -m actgen.study.r1_runs "$@"; }
gen() { echo "$DIR/generators/digits-pool-split$1"; }

part1() {   # selection: split 0, seeds 0-9
  study "${R1[@]}" --split-seed 0 --out "$DIR/r1-split0" --generator "$(gen 0)" --fit \
    --conditions "$ALL" --budgets 1,3 --sweep random,actgen,actgen-balanced --seeds 0-9 \
    --records docs/study/r1 --title "digits R1 (split 0): accuracy against generated images"
}
part2() { "$PY" -m actgen.study.r1_choice docs/study/r1 --seeds 0-9; }
best() { "$PY" -c "import json; print(json.load(open('docs/study/r1/choice.json'))['best'])"; }
part3() {   # confirmation: splits 1 and 2, seeds 0-19, each with its own generator
  local b; b=$(best)
  for s in 1 2; do
    study "${R1[@]}" --split-seed "$s" --out "$DIR/r1-split$s" --generator "$(gen "$s")" --fit \
      --conditions "real,random,$b" --budgets 1,3 --sweep random --seeds 0-19 \
      --records "docs/study/r1-confirm-split$s" --title "digits R1 (split $s): confirmation"
  done
}
part4() {   # the earlier 10-per-class regime (3 held out, 2 rounds) with split 0's generator refitted
  # (PLAN.md, note of 2026-12-04): random and the best variant run again beside the new policy.
  local b; b=$(best)
  local conds="random,actgen-balanced"; [ "$b" != actgen-balanced ] && conds="$conds,$b"
  study --data builtin:digits --labeled-per-class 10 --split-seed 0 --out "$DIR/digits10-split0" \
    --generator "$(gen 0)" --fit --conditions "$conds" --budgets 0.5,2 --sweep "$conds" --seeds 0-9 \
    --jobs "$JOBS" --threads 1 --records docs/study/digits-refit
}
part5() {   # issue 20's checks (PLAN.md, note of 2026-12-04): split 0, seeds 0-9, paired with part 1's actgen
  study "${R1[@]}" --split-seed 0 --out "$DIR/r1-split0" --generator "$(gen 0)" --fit \
    --conditions "actgen,actgen-dpmpp,actgen-decode-half" --budgets 1 --sweep none --seeds 0-9 \
    --records docs/study/r1-part5 --title "digits R1 (split 0): solver and decode size"
}
part6() {   # the main contrast's conditions on split 0 (refitted generator), seeds 0-19 (PLAN.md, 2026-12-04);
  # PLAN.md runs it from 02f2d97's code (its random baseline), where this script was benchmarks/study_r1.sh
  local b; b=$(best)
  study "${R1[@]}" --split-seed 0 --out "$DIR/r1-split0-part6" --generator "$(gen 0)" --fit \
    --conditions "real,random,$b" --budgets 1,3 --sweep random --seeds 0-19 \
    --records docs/study/r1-confirm-split0 --title "digits R1 (split 0, refitted generator): the main contrast"
}
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(1 2 3 4)
for part in "${parts[@]}"; do "part$part"; done
