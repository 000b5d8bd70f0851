#!/usr/bin/env bash
# Continuous training of the bundled model on the CPU, in the background, on idle cores only.
#
#   bash Training/cpu_train.sh start     # lowest priority (nice 19, its own session); resumes runs/cpu,
#                                        #   else starts from the bundled weights
#   bash Training/cpu_train.sh status    # running or not, step, recent losses, CPU-hours
#   bash Training/cpu_train.sh stop      # clean stop: checkpoint, validation, export
#   bash Training/cpu_train.sh eval      # measure the latest checkpoint (Dice) while it trains: a curve point
#                                        #   (eval --weights last: the last weights instead of their average)
#   bash Training/cpu_train.sh finish    # stop, export, evaluate, model-card row, bundle + commit if better
#                                        #   (finish --no-commit: everything but the git commit)
#
# The run lives in runs/cpu (git-ignored): checkpoints every 10 minutes (run.ckpt_minutes), so a killed
# job loses at most 10 minutes; `start` again resumes exactly. On a fresh machine with no runs/cpu, the
# weights of the last bundled model are the starting point (runs/cpu/origin.json records them); hidden
# layers that the configuration adds to their heads start fitted (Training/grow_model.py).
# Prepared training data (.devdata/prepared) are made first when missing (Training/make_devdata.sh).
# Environment: PYTHON (default .venv/bin/python), CONFIG (default Training/configs/cpu.yaml),
# SHARED_DATA (default ../shared/data), THREADS (torch threads, default: all cores), RUN_DIR (default
# runs/cpu), PREPARED (default .devdata/prepared), INIT_WEIGHTS (default: the bundled weights).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-$REPO/.venv/bin/python}"
CONFIG="${CONFIG:-Training/configs/cpu.yaml}"
SHARED="${SHARED_DATA:-$REPO/../shared/data}"
RUN="${RUN_DIR:-$REPO/runs/cpu}"
PREP="${PREPARED:-$REPO/.devdata/prepared}"
PIDFILE="$RUN/train.pid"
BUNDLED="${INIT_WEIGHTS:-$REPO/BrainFMCore/brainfm/models/bundled/brainfm-compact.safetensors}"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

cmd_start() {
  if running; then echo "cpu_train: already running (pid $(cat "$PIDFILE"))"; return 0; fi
  mkdir -p "$RUN"
  local init_model=""  # the model a new run starts from (none: a run that resumes)
  if [ ! -f "$RUN/checkpoints/latest" ] && [ -f "$BUNDLED" ]; then
    init_model="$BUNDLED"
    "$PY" - "$BUNDLED" "$RUN/origin.json" <<'PYEOF'
import json, sys
from pathlib import Path
w, out = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads(w.with_suffix(".json").read_text())
totals = (meta.get("provenance") or {}).get("totals") or {}
Path(out).write_text(json.dumps({"weights": w.name, "sha256": meta.get("weights_sha256"), "totals": totals}, indent=1))
PYEOF
    echo "cpu_train: no local run; starting from the bundled weights"
  fi
  # the job: prepare the data if needed, then train (resuming); all at the lowest priority. Where the
  # kernel groups processes by session (autogroup), nice only ranks a job among its own session's
  # processes, and each session gets an equal share: a nice-19 job took half the CPU from a program
  # started in another terminal. So the job gets a session of its own, and that session the lowest
  # priority as well.
  local threads="${THREADS:-$(nproc)}"
  local detach=()
  if command -v setsid > /dev/null; then detach=(setsid); fi  # (macOS has none, and no autogroup)
  nohup ${detach[@]+"${detach[@]}"} nice -n 19 bash -c '
    set -e
    if [ -w /proc/self/autogroup ]; then echo 19 > /proc/self/autogroup 2>/dev/null || true; fi
    if ! ls "$5"/*.npz > /dev/null 2>&1; then
      PYTHON="$1" bash "$0"/Training/make_devdata.sh "$2" "$3"
    fi
    init=()
    if [ -n "${7:-}" ]; then  # a new run from a model: hidden layers it lacks start fitted, not at zero
      init=(--init "$7")
      grown="$6/init/grown.safetensors"
      rc=0
      [ -f "$grown" ] || OMP_NUM_THREADS="$3" "$1" "$0"/Training/grow_model.py --config "$4" --from "$7" \
        --out "$grown" --set "data.prepared=$5" || rc=$?
      if [ "$rc" = 0 ]; then init=(--init "$grown")
      elif [ "$rc" != 3 ]; then echo "cpu_train: the added hidden layers could not be fitted; they start at zero"; fi
    fi
    exec env OMP_NUM_THREADS="$3" "$1" -m brainfm train --config "$4" --prepared "$5" \
      --out "$6" --device cpu --resume auto --progress machine ${init[@]+"${init[@]}"}
  ' "$REPO" "$PY" "$SHARED" "$threads" "$CONFIG" "$PREP" "$RUN" "$init_model" >> "$RUN/train.out" 2>&1 &
  echo $! > "$PIDFILE"
  echo "cpu_train: started (pid $!, nice 19, log $RUN/train.out)"
}

cmd_status() {
  if running; then echo "cpu_train: running (pid $(cat "$PIDFILE"))"; else echo "cpu_train: not running"; fi
  if [ -f "$RUN/log.csv" ]; then
    "$PY" - "$RUN/log.csv" <<'PYEOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("loss")]
if rows:
    last = rows[-1]
    tail = [float(r["loss"]) for r in rows[-20:]]
    print(f"step {last['step']}, mean loss of the last {len(tail)} logs {sum(tail)/len(tail):.3f}, "
          f"seg_ce {float(last.get('seg_ce') or 'nan'):.3f}, CPU-hours {float(last.get('cpu_s') or 0)/3600:.2f}, "
          f"{float(last.get('it_per_s') or 0):.3f} it/s")
PYEOF
  fi
}

cmd_stop() {
  if ! running; then echo "cpu_train: not running"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  # the trainer's python process is the job's only child after exec
  kill -TERM "$pid" 2>/dev/null || true
  echo "cpu_train: stopping (checkpoint, validation, export; can take a few minutes)"
  for _ in $(seq 1 900); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then echo "cpu_train: still running after 15 min; not killed" >&2; return 1; fi
  rm -f "$PIDFILE"
  echo "cpu_train: stopped"
}

cmd_finish() {
  cmd_stop
  "$PY" "$REPO/Training/bundle_model.py" --run "$RUN" --data "$SHARED" "$@"
}

cmd_eval() {
  "$PY" "$REPO/Training/bundle_model.py" --run "$RUN" --data "$SHARED" --measure-only "$@"
}

case "${1:-}" in
  start) cmd_start ;;
  eval) shift; cmd_eval "$@" ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  finish) shift; cmd_finish "$@" ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
