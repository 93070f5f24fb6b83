#!/usr/bin/env bash
# DistDiff expansion of one split of a dataset on one GPU (the paper's scripts/exps/expand_diff.sh).
# usage: scripts/exps/expand_diff.sh EXPAND_NUM GPU SPLIT [extra expand.py flags]
#   e.g. all four splits of caltech-101 on GPUs 0-3:
#        for S in 0 1 2 3; do scripts/exps/expand_diff.sh 5 $S $S & done; wait
#   then: scripts/exps/train_expand.sh caltech-101 resnet50 0.1 distdiff_5x False 0
# Environment overrides: DATASET (caltech-101), TOTAL_SPLIT (4), GUIDE_MODEL (expand.py's default
# for the dataset: resnet50, smallcnn for digits), GUIDE_MODEL_WEIGHT (expand.py's default: what
# `train_original.py DATASET ARCH 0.1 False 0 --print_checkpoint` prints).
# Writes expanded/<dataset>/distdiff_<EXPAND_NUM>x/; rerunning resumes.
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: $0 EXPAND_NUM GPU SPLIT [expand.py flags]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EXPAND_NUM=$1; GPU=$2; SPLIT=$3; shift 3
DATASET=${DATASET:-caltech-101}
TOTAL_SPLIT=${TOTAL_SPLIT:-4}
# The paper's defaults (docs/METHOD.md#defaults), spelled with the paper's flag names.
SCALE=7.5; START=20; PERIOD=2; CON=0.2; K=3; RHO=10.0; STRENGTH=0.5
EXTRA=()
if [ -n "${GUIDE_MODEL:-}" ]; then EXTRA+=(-a "$GUIDE_MODEL"); fi
if [ -n "${GUIDE_MODEL_WEIGHT:-}" ]; then EXTRA+=(--encoder_weight_path "$GUIDE_MODEL_WEIGHT"); fi
CUDA_VISIBLE_DEVICES=${GPU} python "$REPO/expand.py" \
  --guidance_type transform_guidance -d "$DATASET" "${EXTRA[@]}" \
  --gradient_checkpointing --K "$K" --train_batch_size 1 --optimize_targets global_prototype-local_prototype \
  --strength "$STRENGTH" --num_images_per_prompt "$EXPAND_NUM" --guidance_step "$START" --guidance_period "$PERIOD" \
  --guidance_scale "$SCALE" --constraint_value "$CON" --rho "$RHO" --total_split "$TOTAL_SPLIT" --split "$SPLIT" "$@"
