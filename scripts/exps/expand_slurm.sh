#!/usr/bin/env bash
# Multi-node expansion on SLURM with accelerate: one `accelerate launch` per node, GPUS processes each
# (docs/SCALING.md). Submit from the repository root on a filesystem every node mounts:
#   sbatch --nodes 8 --gpus-per-node 8 --ntasks-per-node 1 --cpus-per-task 64 scripts/exps/expand_slurm.sh \
#          -d imagefolder:/data/imagenet -a resnet50 --output_dir /shared/expanded/imagenet/distdiff_5x --no_report
# Every rank r of the WORLD = nodes x GPUS processes makes shard r of the work list and appends to its own
# OUT/manifest.<r>-of-<WORLD>.jsonl, so nodes share no file and need no lock. A failed node stops the
# launch (torchrun): resubmit the same command; every rank skips what its shard already finished.
# Environment: GPUS (default SLURM_GPUS_ON_NODE, else 8), PORT (default 29500).
#SBATCH --job-name=distdiff-expand
#SBATCH --ntasks-per-node=1
set -euo pipefail
REPO="$(pwd)"
GPUS=${GPUS:-${SLURM_GPUS_ON_NODE:-8}}
PORT=${PORT:-29500}
MAIN=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
WORLD=$((SLURM_JOB_NUM_NODES * GPUS))
# One task per node; SLURM_NODEID is that node's machine rank. Single quotes: expanded on each node.
srun --kill-on-bad-exit=1 bash -c 'accelerate launch --multi_gpu --num_machines '"$SLURM_JOB_NUM_NODES"' \
  --num_processes '"$WORLD"' --machine_rank "$SLURM_NODEID" --main_process_ip '"$MAIN"' \
  --main_process_port '"$PORT"' --mixed_precision no --dynamo_backend no "$0" "$@"' "$REPO/expand.py" "$@"
