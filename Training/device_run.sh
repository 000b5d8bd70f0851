#!/usr/bin/env bash
# The one command for a GPU window. A session has 15 minutes of device time in all, the machine's start
# (minutes) included, so this is one command of <= 9 minutes with evaluation and copying; results come
# back only through $OUT (<= 8 files of <= 16 MiB).
#
#   bash Training/device_run.sh [--minutes 7] [--config FILE] [--set key=value ...] [--smoke] [--steps N]
#
# Before the window, on the CPU machine: `python Training/gpu_handoff.py stage` puts the newest state of
# the CPU run (runs/cpu) into .devdata/ckpt; carry .devdata and .whl. After it: `python
# Training/gpu_handoff.py adopt DIR` (DIR = the returned $OUT), then `bash Training/cpu_train.sh start`
# continues on the CPU, or `bash Training/cpu_train.sh finish` evaluates and bundles.
#
# 1. installs the wheels of .whl/ into /tmp/site (the machine has torch but not nibabel/safetensors/...);
# 2. prepares .devdata/labels -> .devdata/prepared if needed (16 workers; atlas .devdata/gca.mgz);
# 3. measures training throughput (samples/s at 128^3 and 160^3, peak GPU memory; <= 75 s) -> bench.jsonl;
# 4. trains for the rest of the window (Training/configs/gpu_window.yaml: the CPU recipe's model and grid,
#    bigger batches, bf16), resuming from .devdata/ckpt when it holds a checkpoint;
# 5. evaluates on the 2 held-out subjects (Dice, PSNR) -> eval.json;
# 6. copies into $OUT, most important first: ckpt/meta.json, ckpt/model-*.safetensors,
#    ckpt/optim-*.safetensors, log.csv, eval.json, loss_curve.png, bench.jsonl, then the native model
#    and, if prepared here and small, prepared.tar. Every step tolerates the failure of the previous
#    ones; the exit code is training's.
# Environment: OUT (default outputs/device_run), DEVDATA (default .devdata), PYTHON (default python3),
# BUDGET_MIN (the whole command, default 9).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
T0=$(date +%s)
MINUTES=7; SMOKE=0; STEPS=""; CONFIG="Training/configs/gpu_window.yaml"; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --set) EXTRA+=(--set "$2"); shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "device_run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$REPO/outputs/device_run}"
DEVDATA="${DEVDATA:-$REPO/.devdata}"
PY="${PYTHON:-python3}"
BUDGET_MIN="${BUDGET_MIN:-9}"
mkdir -p "$OUT"
RUN="$(mktemp -d "${TMPDIR:-/tmp}/brainfm_run.XXXXXX")"
log() { echo "[device_run $(( $(date +%s) - T0 ))s] $*"; }

# ---- 1. wheels
if compgen -G ".whl/*.whl" > /dev/null; then
  log "installing wheels from .whl/"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || log "WARNING: wheel installation failed"
  export PYTHONPATH="$REPO/BrainFMCore:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO/BrainFMCore${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# ---- 2. prepare if needed
LABELS="$DEVDATA/labels"; PREP="$DEVDATA/prepared"; ATLAS="${ATLAS:-$DEVDATA/gca.mgz}"
NPREP=$(ls "$PREP"/*.npz 2>/dev/null | wc -l); NLAB=$(ls "$LABELS" 2>/dev/null | wc -l)
PREPARED_HERE=0
if [ "$NPREP" -lt "$NLAB" ] || [ "$NPREP" -eq 0 ]; then
  log "preparing $NLAB label maps -> $PREP"
  WORKERS=$(nproc 2>/dev/null || echo 4); [ "$SMOKE" = 1 ] && WORKERS=2
  PREP_OPTS=(); [ "$SMOKE" = 1 ] && PREP_OPTS=(--affine-only)
  "$PY" -m brainfm prepare "$LABELS" -o "$PREP" --atlas "$ATLAS" --workers "$WORKERS" --progress none "${PREP_OPTS[@]}" \
    && PREPARED_HERE=1 || log "WARNING: prepare failed"
fi

# ---- 3. throughput of the compact model on this GPU (samples/s, peak memory)
if [ "$SMOKE" = 0 ] && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "measuring training throughput"
  timeout 75 "$PY" Testing/benchmarks/bench_training.py --sizes 128 160 --steps 8 > "$RUN/bench.jsonl" 2>/dev/null \
    || log "WARNING: throughput measurement incomplete"
fi

# ---- 4. train (resume from .devdata/ckpt)
mkdir -p "$RUN/train/checkpoints"
RESUME=(--resume auto)
if [ -f "$DEVDATA/ckpt/meta.json" ]; then
  STEP=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$DEVDATA/ckpt/meta.json")
  DST="$RUN/train/checkpoints/$(printf 'step_%08d' "$STEP")"
  mkdir -p "$DST" && cp "$DEVDATA"/ckpt/meta.json "$DEVDATA"/ckpt/*.safetensors "$DST"/ && echo "$(basename "$DST")" > "$RUN/train/checkpoints/latest"
  [ -f "$DEVDATA/ckpt/log.csv" ] && cp "$DEVDATA/ckpt/log.csv" "$RUN/train/log.csv"
  log "resuming from step $STEP"
fi
ELAPSED=$(( $(date +%s) - T0 ))
TRAIN_MIN=$("$PY" -c "import sys; m,b,e=map(float,sys.argv[1:]); print(max(0.5, min(m, b - e/60 - 1.5)))" "$MINUTES" "$BUDGET_MIN" "$ELAPSED")
OPTS=(--config "$CONFIG" --prepared "$PREP" --out "$RUN/train" --minutes "$TRAIN_MIN" --progress none
      --set run.optim_dtype=bf16 --set run.export_dtype=fp16 --set run.log_every=10)
EVAL_OPTS=(--samples 2)
if [ "$SMOKE" = 1 ]; then
  OPTS=(--config Training/configs/smoke.yaml --prepared "$PREP" --out "$RUN/train" --minutes 1 --progress none)
  EVAL_OPTS=(--size 24 --samples 1)
fi
[ -n "$STEPS" ] && OPTS+=(--steps "$STEPS")
log "training for at most $TRAIN_MIN min"
"$PY" -m brainfm train "${OPTS[@]}" "${RESUME[@]}" "${EXTRA[@]}"
RC=$?
log "training exit code $RC"

# ---- 5. evaluate on the held-out subjects
CK="$RUN/train/checkpoints/$(cat "$RUN/train/checkpoints/latest" 2>/dev/null)"
if [ -f "$CK/meta.json" ]; then
  "$PY" -m brainfm evaluate --model "$CK" --prepared "$PREP" --n-val 2 "${EVAL_OPTS[@]}" -o "$RUN/eval.json" \
    || log "WARNING: evaluation failed"
fi
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader; fi

# ---- 6. copy results (at most 8 files of <= 16 MiB)
"$PY" - "$RUN" "$OUT" "$CK" "$PREPARED_HERE" "$PREP" <<'PYEOF'
import glob, os, shutil, sys, tarfile
run, out, ck, prepared_here, prep = sys.argv[1:6]
LIMIT, MAXF = 16 * 2**20, 8
items = []  # (source, destination relative to OUT)
if os.path.isfile(os.path.join(ck, "meta.json")):
    items.append((os.path.join(ck, "meta.json"), "ckpt/meta.json"))
    items += [(p, "ckpt/" + os.path.basename(p)) for p in sorted(glob.glob(os.path.join(ck, "model-*.safetensors")))]
    items += [(p, "ckpt/" + os.path.basename(p)) for p in sorted(glob.glob(os.path.join(ck, "optim-*.safetensors")))]
for name in ("train/log.csv", "eval.json", "train/loss_curve.png", "bench.jsonl"):
    items.append((os.path.join(run, name), os.path.basename(name)))
native = sorted(glob.glob(os.path.join(run, "train/model/*.safetensors")))
groups = [[(p, "model/" + os.path.basename(p)), (p[:-len(".safetensors")] + ".json",
           "model/" + os.path.basename(p)[:-len(".safetensors")] + ".json")] for p in native]
if prepared_here == "1" and os.path.isdir(prep):
    tar = os.path.join(run, "prepared.tar")
    with tarfile.open(tar, "w") as t:
        for f in sorted(os.listdir(prep)):
            t.add(os.path.join(prep, f), arcname="prepared/" + f)
    groups.append([(tar, "prepared.tar")])
chosen, skipped = [], []
for src, dst in items:
    (chosen if os.path.isfile(src) and os.path.getsize(src) <= LIMIT and len(chosen) < MAXF else skipped).append((src, dst))
for g in groups:
    ok = all(os.path.isfile(s) and os.path.getsize(s) <= LIMIT for s, _ in g) and len(chosen) + len(g) <= MAXF
    (chosen if ok else skipped).extend(g)
for src, dst in chosen:
    os.makedirs(os.path.dirname(os.path.join(out, dst)) or out, exist_ok=True)
    shutil.copyfile(src, os.path.join(out, dst))
    print(f"[device_run] -> $OUT/{dst} ({os.path.getsize(src) / 2**20:.2f} MiB)")
for src, dst in skipped:
    why = "missing" if not os.path.isfile(src) else ("over 16 MiB" if os.path.getsize(src) > LIMIT else "over 8 files")
    print(f"[device_run] not copied: {dst} ({why})")
PYEOF
[ -f "$RUN/eval.json" ] && "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print('eval', json.dumps(d['mean']))" "$RUN/eval.json"
[ -f "$RUN/train/log.csv" ] && tail -n 3 "$RUN/train/log.csv"
log "done (training exit code $RC)"
exit $RC
