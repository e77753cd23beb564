#!/usr/bin/env bash
# The CIFAR-10-5k accuracy study on one lent GPU, in one call of at most ~9.5 minutes
# (GPU_STUDY_BUDGET_S, default 560 s):
#
#   1. fit the study's generator on its pool (configs/fit-cifar10-5k-gpu.yaml, time-boxed by
#      train.max_seconds = GPU_STUDY_FIT_S, default 170 s); pack it into $OUT at once, in parts
#      under the 16 MiB a returned file may weigh (generator.tar.part-*; reassemble with cat);
#   2. beside the study, score it with benchmarks/bench_generator.py (a ResNet-18 trained on the
#      pool classifies 20 renders per class);
#   3. actgen.study.r1_runs on the split made here (real, random, txt2img, actgen at 1x and
#      2x a 50-image round budget, seeds 0-9 in seed-major order, 8 runs at a time) until the
#      budget runs out; the finished runs' records come back in records.tar.
#
# To continue a study, the prepare script also carries the generator and the records made so far
# (.gpustudy/generator, .gpustudy/records): the fit is skipped and finished runs are not rerun.
#
# Prepare HERE first: `bash study/gpu_study_prepare.sh` (wheels without Ray and the split
# into the ignored .gpustudy/), then call the device with command `bash study/gpu_study.sh`,
# carry [".gpustudy"]. `bash study/gpu_study.sh --tiny` tries the whole script on this CPU
# machine with tiny sizes (a 20-step fit, one seed, 12 epochs, 4-image rounds).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
TINY=0
for a in "$@"; do
    case $a in
        --tiny) TINY=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_study.sh: unknown argument $a (use --tiny or nothing)" >&2; exit 2 ;;
    esac
done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DISABLE_TELEMETRY=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$(mktemp -d /tmp/gpu_study_out.XXXXXX)}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_study.log") 2>&1
SCRATCH=$(mktemp -d /tmp/gpu_study.XXXXXX)
say() { echo "[gpu_study $(date +%H:%M:%S) +${SECONDS}s] $*"; }
STUDY_DIR=$REPO/.gpustudy/study
[[ -f $STUDY_DIR/data/split.json ]] || { say "FATAL: no split in $STUDY_DIR (run study/gpu_study_prepare.sh, carry .gpustudy)"; exit 2; }

if [[ $TINY == 1 ]]; then
    PY=$REPO/.venv/bin/python
    BUDGET=${GPU_STUDY_BUDGET_S:-1500}
    FIT_SETS=(--set train.steps=20 --set train.autoencoder_steps=10 --set "model.block_out_channels=[16,32,32]"
              --set model.attention_head_dim=8 --set model.cross_attention_dim=32 --set train.batch_size=16
              --set train.max_seconds=60 --set sample.per_class=1 --set sample.num_steps=2)
    BENCH_SETS=(--epochs 1 --per-class 1 --steps 2 --batch 10 --device cpu --train-set train.device=cpu)
    STUDY_SETS=(--seeds 0 --budget 4 --budgets 1 --conditions real,actgen --jobs 1 --threads 2
                --train-set train.epochs=12 --train-set rounds.horizon=12 --train-set rounds.merge_epoch=12
                --train-set train.device=cpu --build-set guidance.num_steps=4 --build-set guidance.reference_steps=4
                --build-set guidance.guidance_steps=2 --build-set batch_size=4)
    DEVICE=cpu
else
    PY=${GPU_STUDY_PYTHON:-python3}
    BUDGET=${GPU_STUDY_BUDGET_S:-545}
    FIT_SETS=(--set "train.max_seconds=${GPU_STUDY_FIT_S:-195}")
    BENCH_SETS=(--epochs 30 --per-class 20 --batch 100 --device cuda --train-set loader.num_workers=0)
    STUDY_SETS=(--seeds 0-9 --budget 50 --budgets 1,2 --conditions real,random,txt2img,actgen --jobs 8 --threads 2)
    DEVICE=cuda
fi
say "mode: $([[ $TINY == 1 ]] && echo 'tiny (CPU tryout)' || echo GPU), budget ${BUDGET}s, results in $OUT"

# -------------------------------------------------------------------------------- packages
# actgen.* from the repository's folders (a folder of links, as in gpu_check.sh), the console
# scripts the study and the trainer's inline builds call as small wrappers on PATH.
PKGS=$SCRATCH/pkgs
mkdir -p "$PKGS/actgen" "$SCRATCH/bin"
for d in shards trainer builder fitting demo; do ln -sfn "$REPO/$d" "$PKGS/actgen/$d"; done
if [[ $TINY != 1 ]]; then
    say "installing $(ls "$REPO"/.gpustudy/whl/*.whl | wc -l) wheels into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$REPO"/.gpustudy/whl/*.whl || { say "FATAL: installing the wheels failed"; exit 3; }
    export PYTHONPATH=/tmp/site:$PKGS${PYTHONPATH:+:$PYTHONPATH}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
else
    export PYTHONPATH=$PKGS${PYTHONPATH:+:$PYTHONPATH}
fi
for pair in actgen-train:actgen.trainer.cli actgen-build:actgen.builder.cli actgen-fit-generator:actgen.fitting.cli; do
    printf '#!/bin/sh\nexec %s -m %s "$@"\n' "$PY" "${pair#*:}" >"$SCRATCH/bin/${pair%%:*}"
    chmod +x "$SCRATCH/bin/${pair%%:*}"
done
export PATH=$SCRATCH/bin:$PATH
left() { echo $((BUDGET - SECONDS)); }

# -------------------------------------------------------------------------------- 1. fit
GEN=$SCRATCH/cifar10-5k-pool
mkdir -p "$SCRATCH/records"
[[ -d $REPO/.gpustudy/records ]] && cp "$REPO"/.gpustudy/records/*.json "$SCRATCH/records/" 2>/dev/null
if [[ -f $REPO/.gpustudy/generator/fit_record.json ]]; then
    say "using the carried generator .gpustudy/generator (no fit)"
    GEN=$REPO/.gpustudy/generator
else
    say "BEGIN fit (timeout $(( $(left) - 200 ))s)"
    timeout -k 10 $(( $(left) - 200 )) actgen-fit-generator --config configs/fit-cifar10-5k-gpu.yaml --output "$GEN" \
        --set "data.path=$STUDY_DIR/data/pool.parquet" --set "train.device=$DEVICE" "${FIT_SETS[@]}"
    say "END fit: rc=$?"
    [[ -f $GEN/fit_record.json ]] || { say "FATAL: no generator"; exit 4; }
    rm -rf "$GEN/checkpoints"
    tar -C "$SCRATCH" -cf - cifar10-5k-pool | split -b 15M -d - "$OUT/generator.tar.part-"
    ( cd "$OUT" && sha256sum generator.tar.part-* )
    cp "$GEN"/samples/*.png "$OUT/fit_grid.png" 2>/dev/null
fi

# -------------------------------------------------------------------------------- 2. score (beside)
BENCH_PID=
if [[ ! -f $REPO/.gpustudy/generator/fit_record.json ]]; then
mkdir -p "$SCRATCH/bench"
OMP_NUM_THREADS=2 timeout -k 10 $(( $(left) - 30 )) "$PY" benchmarks/bench_generator.py --skip-fit --output "$GEN" \
    --train-config configs/train-cifar10-5k.yaml --train-set "data.source.path=$STUDY_DIR/data/pool.parquet" \
    --classifier-dir "$SCRATCH/classifier" --results-dir "$OUT" --threads 2 "${BENCH_SETS[@]}" \
    >"$SCRATCH/bench.log" 2>&1 &
BENCH_PID=$!
fi

# -------------------------------------------------------------------------------- 3. study
say "BEGIN study (timeout $(( $(left) - 20 ))s)"
timeout -k 10 $(( $(left) - 20 )) "$PY" -m actgen.study.r1_runs --data ../shared/data/cifar10-5k/train.parquet \
    --labeled-per-class 50 --out "$STUDY_DIR" --generator "$GEN" --records "$SCRATCH/records" \
    --train-config configs/train-study-cifar10-5k.yaml --build-config configs/build-study-cifar10-5k.yaml \
    "${STUDY_SETS[@]}"
say "END study: rc=$? ($(ls "$SCRATCH/records" 2>/dev/null | grep -c '\-s[0-9]*\.json$') runs recorded)"
if [[ -n $BENCH_PID ]]; then wait $BENCH_PID; say "bench_generator: rc=$?"; tail -n 20 "$SCRATCH/bench.log"; fi
tar -C "$SCRATCH" -cf "$OUT/records.tar" records -C "$STUDY_DIR" logs 2>/dev/null
ls -la "$OUT"
say "done"
