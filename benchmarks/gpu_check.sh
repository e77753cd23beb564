#!/usr/bin/env bash
# The one prepared GPU check of the builder: Stable Diffusion 2.1-base architecture (random weights)
# at 512x512, float16, on one GPU, in at most 8 minutes (GPU_CHECK_BUDGET_S, default 465 s).
#
#   0. solvers: DDPM at 40 steps against DDIM and DPM-Solver++ (2M) at 20 (txt2img, img2img,
#      actgen), and the adversarial term's cost against img2img (every image, half of them as in
#      the last round of the §1.3 schedule, the decode at 256), batch 8;
#   1. samplers: txt2img / img2img / actgen (every row adversarial, contrastive bank full) and
#      diffusers' StableDiffusionImg2ImgPipeline on the same components, 40 steps, batch 8 then
#      batch 16: images/s, s/image, peak GPU memory (an out-of-memory is recorded, not fatal);
#   2. NaN check: one actgen batch of 8 in float16 and in bfloat16, non-finite pixels and latents;
#   3. a full actgen-build round of 32 images (configs/build-sd21-base.yaml, actgen mode, batch 8)
#      through Ray Data with one GPU worker; if Ray fails, the same round again with
#      ray.executor=local, labelled as such;
#   4. torch.compile of the UNet on and off, txt2img batch 8 (compile time reported apart);
#   5. (after the samplers) SDXL base's architecture at 1024², float16, batch 2: txt2img, img2img,
#      actgen (DDPM-40) and txt2img with DPM-Solver++ at 20 steps, images/s and peak memory.
# Most valuable first; every part has a hard timeout and writes its figures as soon as it has them.
#
# Results: $OUT/gpu_check.json, the log $OUT/gpu_check.log (and the round's contact_sheet.png);
# a table at the end. Without $OUT: a new temporary folder (printed). GPU_CHECK_PARTS (default
# "samplers nan round compile") picks parts, e.g. GPU_CHECK_PARTS=round for the round alone.
#
# On the GPU machine: run `bash benchmarks/gpu_prepare.sh` here first (wheels into .whl/, the
# architecture configs into .gpu/), then there `bash benchmarks/gpu_check.sh` with .whl and .gpu
# carried. On this CPU machine: `bash benchmarks/gpu_check.sh --tiny` runs every part with tiny
# sizes (64x64, 4 steps, batch 2, a 4-image round, compile with the eager backend) on the
# project's .venv, to try the script itself.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
TINY=${GPU_CHECK_TINY:-0}
PARTS=" ${GPU_CHECK_PARTS:-solvers samplers sdxl nan round compile} "
want() { [[ $PARTS == *" $1 "* ]]; }
for a in "$@"; do
    case $a in
        --tiny) TINY=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $a (use --tiny or nothing)" >&2; exit 2 ;;
    esac
done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Nothing can be reached from the GPU machine: never let a library wait on the network.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DISABLE_TELEMETRY=1 HF_HUB_DISABLE_TELEMETRY=1
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
if [[ -z "${OUT:-}" ]]; then
    if [[ $TINY == 1 ]]; then OUT=$(mktemp -d /tmp/gpu_check_out.XXXXXX); else OUT=$REPO/benchmarks/results/gpu_check; fi
fi
mkdir -p "$OUT"
JSON=$OUT/gpu_check.json
LOG=$OUT/gpu_check.log
rm -f "$JSON" "$LOG"
exec > >(tee -a "$LOG") 2>&1
SCRATCH=$(mktemp -d /tmp/gpu_check.XXXXXX)
say() { echo "[gpu_check $(date +%H:%M:%S) +${SECONDS}s] $*"; }

# -------------------------------------------------------------------------------- sizes
if [[ $TINY == 1 ]]; then
    PY=${GPU_CHECK_PYTHON:-$REPO/.venv/bin/python}
    BUDGET=${GPU_CHECK_BUDGET_S:-1500}
    COMMON=(--device cpu --size 64 --steps 4 --repeats 1 --threads 2)
    BATCHES=(2)
    DTYPE=float32
    NAN_DTYPES=float32          # the CPU runs float32 only; fp16/bf16 are the GPU's
    NAN_BATCH=2
    ROUND=(--budget 4 --batch 2 --dtype float32 --cpus-per-worker 1 --num-cpus 2)
    COMPILE=(--batch 2 --backend eager --steps 2)   # eager backend: Dynamo's tracing, no code generation
    SOLVERS_EXTRA=(--batch 1 --steps 2 --no-warmup)  # 15 samplers: each once, the code path only
    SDXL=(--size 64 --steps 2 --batch 1 --repeats 0 --dtype bfloat16)
    CAP_ENV=120 CAP_SAMPLERS=600 CAP_SOLVERS=600 CAP_SDXL=600 CAP_NAN=400 CAP_ROUND=600 CAP_COMPILE=600
    ARCH_DIR=$REPO/.gpu/sd21-base-arch
    [[ -d $ARCH_DIR ]] || ARCH_DIR=$REPO/../shared/configs/sd21-base-arch
else
    PY=${GPU_CHECK_PYTHON:-python3}
    BUDGET=${GPU_CHECK_BUDGET_S:-490}
    COMMON=(--device cuda --size 512 --steps 40 --repeats 2)
    BATCHES=(8 16)
    DTYPE=float16
    NAN_DTYPES=float16,bfloat16
    NAN_BATCH=8
    ROUND=(--budget 32 --batch 8 --dtype float16 --cpus-per-worker 4)
    COMPILE=(--batch 8 --backend inductor)
    SOLVERS_EXTRA=()
    SDXL=(--size 1024 --steps 40 --batch 2 --repeats 1 --dtype float16)
    CAP_ENV=90 CAP_SAMPLERS=150 CAP_SOLVERS=150 CAP_SDXL=150 CAP_NAN=100 CAP_ROUND=200 CAP_COMPILE=300
    ARCH_DIR=$REPO/.gpu/sd21-base-arch
fi
say "mode: $([[ $TINY == 1 ]] && echo 'tiny (CPU tryout)' || echo GPU), budget ${BUDGET}s, results in $OUT"
if [[ ! -f $ARCH_DIR/unet/config.json ]]; then
    say "FATAL: no SD 2.1-base architecture configs at $ARCH_DIR (run benchmarks/gpu_prepare.sh and carry .gpu)"
    exit 2
fi

# -------------------------------------------------------------------------------- packages
# actgen.* is mapped from the repository's top-level folders (pyproject's package-dir); without
# installing it, a folder of links gives the same namespace (actgen has no __init__.py).
PKGS=$SCRATCH/pkgs
mkdir -p "$PKGS/actgen"
for d in shards trainer builder fitting demo; do ln -sfn "$REPO/$d" "$PKGS/actgen/$d"; done
if [[ $TINY != 1 ]]; then
    if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
        say "installing $(ls "$REPO"/.whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
        if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
                "$REPO"/.whl/*.whl; then
            say "FATAL: installing the wheels failed"; exit 3
        fi
        SITE=/tmp/site
    else
        say "WARNING: no wheels in .whl/ (run benchmarks/gpu_prepare.sh and carry .whl); using what is installed"
        SITE=
    fi
    export PYTHONPATH=${SITE:+$SITE:}$PKGS${PYTHONPATH:+:$PYTHONPATH}
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
else
    export PYTHONPATH=$PKGS${PYTHONPATH:+:$PYTHONPATH}
fi
say "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])')), PYTHONPATH=$PYTHONPATH"
BENCH=("$PY" "$REPO/benchmarks/bench_gpu.py")
"${BENCH[@]}" mark --json "$JSON" --part setup --rc 0 --seconds "$SECONDS"
"$PY" - "$JSON" "$TINY" <<'EOF'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
d["mode"] = "tiny (CPU tryout: 64x64, 4 steps, batch 2; not figures)" if sys.argv[2] == "1" else "gpu"
json.dump(d, open(p, "w"), indent=2)
EOF

# -------------------------------------------------------------------------------- parts
# part NAME CAP MIN_S -- command...: runs under `timeout` = min(CAP, what is left of BUDGET - 5 s),
# or is skipped when less than MIN_S would be left; records rc and seconds in the JSON.
part() {
    local name=$1 cap=$2 min=$3; shift 4
    local left=$((BUDGET - SECONDS - 5))
    local t=$((cap < left ? cap : left))
    if ((t < min)); then
        say "SKIP $name: ${left}s left of the budget, it needs ${min}s"
        "${BENCH[@]}" mark --json "$JSON" --part "$name" --rc -1 --seconds 0 --note "skipped: out of time"
        return 1
    fi
    say "BEGIN $name (timeout ${t}s)"
    local start=$SECONDS
    timeout -k 10 "$t" "$@"
    local rc=$?
    local took=$((SECONDS - start))
    local note=""
    ((rc == 124 || rc == 137)) && note="timed out after ${t}s"
    say "END $name: rc=$rc in ${took}s ${note}"
    "${BENCH[@]}" mark --json "$JSON" --part "$name" --rc "$rc" --seconds "$took" --note "$note"
    return $rc
}

# After the round: nothing of it may keep the GPU (its process group; Ray's processes on the
# disposable GPU machine only, never on a shared CPU machine).
cleanup_round() {
    local pidfile=$SCRATCH/round/cli.pid
    if [[ -f $pidfile ]]; then
        local pid
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then say "killing the leftover actgen-build process group $pid"; kill -9 -- "-$pid" 2>/dev/null; fi
        rm -f "$pidfile"
    fi
    if [[ $TINY != 1 ]]; then timeout 30 "$PY" -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true; fi
}

part env "$CAP_ENV" 20 -- "${BENCH[@]}" env --json "$JSON"
# First (the figures not measured yet on a GPU): DDPM-40 against DDIM / DPM-Solver++ at 20 steps,
# and what the adversarial term costs on every image, on half (the §1.3 schedule's last round) and
# decoded at half the side (batch 8).
want solvers && part solvers "$CAP_SOLVERS" 60 -- "${BENCH[@]}" solvers --json "$JSON" --arch-dir "$ARCH_DIR" \
    "${COMMON[@]}" --batch "${BATCHES[0]}" --dtype "$DTYPE" "${SOLVERS_EXTRA[@]}"
# Batch 8: every mode, with actgen-unchunked (the adversarial decode of the whole batch at once,
# as before guidance.adversarial_chunk) for the memory comparison. Batch 16: the memory-bound
# modes only, one timed call, to stay inside the budget.
want samplers && for b in "${BATCHES[@]}"; do
    if ((b >= 16)); then modes="txt2img,actgen,actgen-unchunked" extra=(--repeats 1); else
        modes="txt2img,img2img,actgen,actgen-unchunked,diffusers-img2img" extra=(); fi
    part "samplers_b$b" "$CAP_SAMPLERS" 40 -- "${BENCH[@]}" samplers --json "$JSON" --arch-dir "$ARCH_DIR" "${COMMON[@]}" \
        --batch "$b" --dtype "$DTYPE" --modes "$modes" "${extra[@]}"
done
# SDXL base's architecture at 1024² (512² on the CPU tryout is too slow: 64², 2 steps, batch 1).
want sdxl && part sdxl "$CAP_SDXL" 60 -- "${BENCH[@]}" sdxl --json "$JSON" --arch-dir "$ARCH_DIR" "${COMMON[@]}" \
    "${SDXL[@]}"
want nan && part nan "$CAP_NAN" 40 -- "${BENCH[@]}" nan --json "$JSON" --arch-dir "$ARCH_DIR" "${COMMON[@]}" \
    --batch "$NAN_BATCH" --dtypes "$NAN_DTYPES"
round_part() {   # round_part EXECUTOR: bench_gpu ends actgen-build itself 15 s before the hard timeout
    local ex=$1 left=$((BUDGET - SECONDS - 5))
    local t=$((CAP_ROUND < left ? CAP_ROUND : left))
    part "round_$ex" "$CAP_ROUND" 60 -- "${BENCH[@]}" round --json "$JSON" --arch-dir "$ARCH_DIR" "${COMMON[@]}" \
        "${ROUND[@]}" --executor "$ex" --workdir "$SCRATCH/round" --timeout $((t - 15)) --copy-sheet "$OUT/contact_sheet.png"
    local rc=$?
    cleanup_round
    return $rc
}
# GPU memory of the round (its processes are Ray's): sampled with nvidia-smi every 0.5 s.
SMI_PID=
if want round && [[ $TINY != 1 ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$SCRATCH/smi_round.txt" 2>/dev/null &
    SMI_PID=$!
fi
if want round && ! round_part ray; then
    say "the round through Ray failed: the same round once more with ray.executor=local (no Ray)"
    round_part local
fi
if [[ -n $SMI_PID ]]; then
    kill "$SMI_PID" 2>/dev/null
    "$PY" "${BENCH[1]}" mark --json "$JSON" --part round_gpu_memory --rc 0 --seconds 0 \
        --note "peak GPU memory used during the round (nvidia-smi, whole GPU): $(sort -n "$SCRATCH/smi_round.txt" | tail -1) MiB"
fi
want compile && part compile "$CAP_COMPILE" 60 -- "${BENCH[@]}" compile --json "$JSON" --arch-dir "$ARCH_DIR" "${COMMON[@]}" \
    --dtype "$DTYPE" "${COMPILE[@]}"

# -------------------------------------------------------------------------------- report
"${BENCH[@]}" mark --json "$JSON" --part total --rc 0 --seconds "$SECONDS"
"${BENCH[@]}" report --json "$JSON"
rm -rf "$SCRATCH"
say "done in ${SECONDS}s: $JSON, $LOG"
sleep 1   # let tee write the last lines
