#!/usr/bin/env bash
# Prepare study/gpu_study.sh HERE, before the device call. What the GPU machine lacks travels
# inside the repository in one folder git ignores, .gpustudy/:
#
#   .gpustudy/whl/                the wheels of benchmarks/gpu_prepare.sh without Ray (a study's
#                                 builds run ray.executor=local; Ray's wheel would not fit the
#                                 64 MiB the working tree may weigh beside the data)
#   .gpustudy/study/data/         the study's split of the CIFAR-10-5k subset (pool, labeled, test),
#                                 made here by actgen.study.r1_runs's own make_split
#   .gpustudy/generator/          to continue a study: the generator fitted by an earlier call
#   .gpustudy/records/            (STUDY_GENERATOR, default runs/generators/cifar10-5k-pool) and the
#                                 records so far (STUDY_RECORDS, default docs/study/cifar10-5k-gpu-pilot)
#
# Then call the device with: command `bash study/gpu_study.sh`, carry [".gpustudy"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${STUDY_DATA:-../shared/data/cifar10-5k/train.parquet}
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qxF /.gpustudy/ "$EXCLUDE" 2>/dev/null || echo /.gpustudy/ >>"$EXCLUDE"
[[ -d .whl ]] || bash benchmarks/gpu_prepare.sh
mkdir -p .gpustudy/whl
rm -f .gpustudy/whl/*.whl
for w in .whl/*.whl; do
    case $(basename "$w") in ray-*) ;; *) cp "$w" .gpustudy/whl/ ;; esac
done
.venv/bin/python - "$DATA" <<'PY'
import sys
from pathlib import Path
from actgen.study.r1_runs import make_split, parse_args
args = parse_args(["--data", sys.argv[1], "--labeled-per-class", "50", "--generator", "-",
                   "--out", ".gpustudy/study", "--records", "-"])
make_split(args, Path(".gpustudy/study"))
PY
GEN=${STUDY_GENERATOR:-runs/generators/cifar10-5k-pool}
RECORDS=${STUDY_RECORDS:-docs/study/cifar10-5k-gpu-pilot}
rm -rf .gpustudy/generator .gpustudy/records .gpustudy/study/runs .gpustudy/study/logs
if [[ -f $GEN/fit_record.json ]]; then
    cp -r "$GEN" .gpustudy/generator && rm -rf .gpustudy/generator/checkpoints
    mkdir -p .gpustudy/records
    cp "$RECORDS"/*-s*.json "$RECORDS"/settings.json .gpustudy/records/ 2>/dev/null || true
fi
du -sh .gpustudy/*
