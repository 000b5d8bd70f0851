#!/usr/bin/env bash
# Build, on a CPU machine, everything a GPU window needs, in git-ignored folders of this checkout:
#   .devdata/prepared/   the 20 SynthSeg label maps prepared once (labels + compact atlas mapping, ~17 MB)
#   .whl/                wheels the GPU machine lacks (nibabel; it already has torch, scipy, scikit-image,
#                        safetensors, pillow, tqdm, pyyaml)
# The label maps themselves do not travel (prepare runs here, SimpleITK registration on the CPU).
#
#   bash Training/make_devdata.sh [SHARED_DATA_DIR] [WORKERS]
#
# Then, with a GPU window (see Training/README.md):
#   command `bash Training/device_run.sh --minutes 8`, carrying `.devdata` and `.whl`
#   (device_run.sh writes into $OUT when it is set)
# and copy $OUT/ckpt/* and $OUT/log.csv into .devdata/ckpt/ before the next window.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SHARED="${1:-$REPO/../shared/data}"
WORKERS="${2:-$(nproc)}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
LABELS="$SHARED/SynthSeg/data/training_label_maps"
ATLAS="$SHARED/BrainFM/files/gca.mgz"
for f in "$LABELS" "$ATLAS"; do
  [ -e "$f" ] || { echo "make_devdata: $f not found (pass the shared data folder)" >&2; exit 2; }
done
grep -qx '/.devdata/' .gitignore && grep -qx '/.whl/' .gitignore || { echo "make_devdata: .devdata/.whl must be git-ignored" >&2; exit 2; }
mkdir -p .devdata/ckpt .whl
"$PY" -m brainfm prepare "$LABELS" -o .devdata/prepared --atlas "$ATLAS" --workers "$WORKERS" --progress bar
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "nibabel==$("$PY" -c 'import nibabel; print(nibabel.__version__)')"
du -sh .devdata .whl
total=$(du -sm .devdata .whl | awk '{s+=$1} END {print s}')
echo "carried size: ${total} MiB (limit 64 MiB with the working tree)"
