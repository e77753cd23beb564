#!/usr/bin/env bash
# Prepare the GPU check (benchmarks/gpu_check.sh) HERE, before the device call: what the GPU
# machine lacks must travel inside the repository, in folders git ignores (.git/info/exclude):
#
#   .gpu/sd21-base-arch/  the SD 2.1-base component configs (../shared does not travel)
#   .whl/                 wheels for Python 3.12 / x86-64 of the packages its image lacks
#                         (the versions of this project's .venv): diffusers, ray (repacked, see
#                         below), datasets, webdataset, omegaconf, and their missing dependencies
#
# Ray's wheel (79 MB) alone is over the 64 MiB the working tree may weigh. It is repacked without
# two parts a one-node Ray Data run never loads: ray/jars/ (the Java worker, 31 MB compressed)
# and ray/dashboard/client/build/ (the dashboard's web front end; the builder starts Ray with
# include_dashboard=False). Everything else is byte-identical; RECORD is rewritten to match.
#
# Then call the device with: command `bash benchmarks/gpu_check.sh`, carry [".whl", ".gpu"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
VENV_PY=$REPO/.venv/bin/python
ARCH_SRC=${SD21_ARCH:-$REPO/../shared/configs/sd21-base-arch}

# 1. Ignored folders.
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
touch "$EXCLUDE"
for p in /.gpu/ /.whl/; do grep -qxF "$p" "$EXCLUDE" || echo "$p" >>"$EXCLUDE"; done

# 2. The architecture configs.
rm -rf .gpu/sd21-base-arch
mkdir -p .gpu
cp -r "$ARCH_SRC" .gpu/sd21-base-arch
echo "copied $ARCH_SRC -> .gpu/sd21-base-arch"

# 3. Wheels, at the versions of this project's .venv.
PACKAGES=(diffusers ray datasets webdataset omegaconf
          braceexpand                                      # webdataset
          dill multiprocess                                # datasets (the image's are absent)
          importlib_metadata                               # diffusers
          jsonschema jsonschema-specifications referencing rpds-py)   # ray
PINS=()
for name in "${PACKAGES[@]}"; do
    v=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    PINS+=("$name==$v")
done
echo "wheels: ${PINS[*]}"
rm -rf .whl
mkdir -p .whl
PLATFORMS=()
for pl in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$pl")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${PINS[@]}" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
for spec in "${PINS[@]}"; do
    n=${spec%%==*}; n=${n//-/_}
    ls .whl/ | grep -qi "^${n}-" || { echo "FATAL: no wheel for $spec in .whl/" >&2; exit 1; }
done

# 4. Repack Ray without ray/jars/ and ray/dashboard/client/build/.
"$VENV_PY" - .whl <<'EOF'
import base64, csv, hashlib, io, sys, zipfile
from pathlib import Path

DROP = ("ray/jars/", "ray/dashboard/client/build/")
(whl,) = Path(sys.argv[1]).glob("ray-*.whl")
tmp = whl.with_name(whl.name + ".tmp")
dropped = 0
with zipfile.ZipFile(whl) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
    record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
    for info in src.infolist():
        if info.filename.startswith(DROP):
            dropped += info.file_size
            continue
        if info.filename == record_name:
            continue
        data = src.read(info)
        out = zipfile.ZipInfo(info.filename, info.date_time)
        out.external_attr = info.external_attr          # keeps the executables' mode bits
        out.compress_type = zipfile.ZIP_DEFLATED
        dst.writestr(out, data, compresslevel=9)
    rows = [r for r in csv.reader(io.StringIO(src.read(record_name).decode())) if r and not r[0].startswith(DROP)]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    dst.writestr(zipfile.ZipInfo(record_name, (2020, 1, 1, 0, 0, 0)), buf.getvalue())
before = whl.stat().st_size
tmp.replace(whl)
print(f"repacked {whl.name}: {before / 2**20:.1f} MiB -> {whl.stat().st_size / 2**20:.1f} MiB "
      f"(dropped {dropped / 2**20:.1f} MiB uncompressed: {', '.join(DROP)})")
EOF

# 5. What will travel: tracked files, untracked files git does not ignore, and the carried folders.
# (files deleted but still tracked are skipped; the sizes are what is on disk now)
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | { xargs -0 -r stat -L -c %s 2>/dev/null || true; } \
        | awk '{s+=$1} END {print s+0}')
carried=$(du -sb .whl .gpu | awk '{s+=$1} END {print s}')
ls -l .whl
printf 'working tree %.1f MiB + .whl/.gpu %.1f MiB = %.1f MiB of the 64 MiB limit\n' \
    "$(echo "$tree / 1048576" | bc -l)" "$(echo "$carried / 1048576" | bc -l)" "$(echo "($tree + $carried) / 1048576" | bc -l)"
echo "next: device run with command 'bash benchmarks/gpu_check.sh', carry [\".whl\", \".gpu\"], timeout_s 560"
