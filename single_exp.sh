#!/bin/sh
# The whole DistDiff job in one command: guide classifier -> 5x expansion -> classifier on
# original + synthetic data (seeds 1 2 3) -> results table.
#
#   sh single_exp.sh                                   # embedded default: digits, offline, CPU
#   sh single_exp.sh DATASET BACKBONE NUM_GPUS COPIES  # e.g. the paper: caltech-101 resnet50 4 5
#
# With arguments the expansion is split over NUM_GPUS independent jobs (--split/--total_split,
# one per GPU) as the paper's scripts do. Every step resumes: rerunning skips finished work.
set -eu
cd "$(dirname "$0")"

if [ "$#" -eq 0 ]; then
  DATASET=digits; BACKBONE=smallcnn; NUM_GPUS=1; COPIES=5
elif [ "$#" -eq 4 ]; then
  DATASET=$1; BACKBONE=$2; NUM_GPUS=$3; COPIES=$4
else
  echo "usage: sh single_exp.sh [DATASET BACKBONE NUM_GPUS COPIES]" >&2
  echo "  e.g. sh single_exp.sh caltech-101 resnet50 4 5" >&2
  exit 2
fi
case "$NUM_GPUS" in ''|*[!0-9]*|0) echo "NUM_GPUS must be a positive integer, got '$NUM_GPUS'" >&2; exit 2;; esac
case "$COPIES" in ''|*[!0-9]*|0) echo "COPIES must be a positive integer, got '$COPIES'" >&2; exit 2;; esac

LR=0.1          # the paper's lr 0.1, from scratch (docs/METHOD.md#defaults)
PRETRAINED=False
EXP=distdiff_${COPIES}x
SLUG=$(python -c "import sys; from distdiff.data.datasets import dataset_slug; print(dataset_slug(sys.argv[1]))" "$DATASET")
# Seed 1 of step 1 is the guide; train_original.py says where it writes it.
GUIDE=$(python train_original.py "$DATASET" "$BACKBONE" "$LR" "$PRETRAINED" 0 --seed 1 --print_checkpoint)
# digits has its own val split, so its runs also report the test accuracy at the best validation
# epoch at no cost to the 10-shot train split; the paper's datasets keep the paper's protocol.
TRAIN_FLAGS=""
EXPAND_FLAGS=""
if [ "$DATASET" = digits ]; then
  TRAIN_FLAGS="--validation"
  EXPAND_FLAGS="--batch_size 20"  # CPU: batching sources and copies is several times faster than 1
fi

echo "== 1/4 original data: $BACKBONE on $DATASET, seeds 1 2 3 (seed 1 is the guide)"
bash scripts/exps/train_original.sh "$DATASET" "$BACKBONE" "$LR" "$PRETRAINED" 0 $TRAIN_FLAGS

echo "== 2/4 DistDiff expansion, ${COPIES}x, $NUM_GPUS job(s)"
split=0
pids=""
while [ "$split" -lt "$NUM_GPUS" ]; do
  CUDA_VISIBLE_DEVICES=$split python expand.py -d "$DATASET" -a "$BACKBONE" --guide_checkpoint "$GUIDE" \
    --num_images_per_prompt "$COPIES" --output_dir "expanded/$SLUG/$EXP" \
    --split "$split" --total_split "$NUM_GPUS" $EXPAND_FLAGS &
  pids="$pids $!"
  split=$((split + 1))
done
for pid in $pids; do wait "$pid"; done

echo "== 3/4 original + synthetic: $BACKBONE, seeds 1 2 3"
bash scripts/exps/train_expand.sh "$DATASET" "$BACKBONE" "$LR" "$EXP" "$PRETRAINED" 0 $TRAIN_FLAGS

echo "== 4/4 results (best test accuracy over epochs, mean ± std over seeds)"
python parse_logs.py "checkpoint/$SLUG" --multi
