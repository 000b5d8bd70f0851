#!/usr/bin/env bash
# Multi-GPU training on one machine: one process per GPU (DDP, NCCL), same options as `brainfm train`.
#   bash Training/launch_torchrun.sh [NGPUS] --config Training/configs/pretrain.yaml --prepared DIR --out DIR --minutes 60
# Rerunning the same command resumes from the latest checkpoint in --out.
set -euo pipefail
NGPUS="${1:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
[ $# -gt 0 ] && shift
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec torchrun --standalone --nnodes=1 --nproc_per_node="$NGPUS" -m brainfm train "$@"
