#!/bin/sh
# The whole DistDiff job in one command, as whole-pipeline replicates: for each replicate r (seeds
# 1 2 3, as the paper's seeds) the classifier on the original data (seed r; it is also replicate r's
# guide) -> a 5x expansion guided by it (seed r) -> the classifier on original + that expansion
# (seed r) -> the results table, each replicate paired with the original data's.
#
#   sh single_exp.sh                                   # embedded default: digits, offline, CPU
#   sh single_exp.sh DATASET BACKBONE NUM_GPUS COPIES  # e.g. the paper: caltech-101 resnet50 4 5
#   REPLICATES="1 2 3 4 5" sh single_exp.sh            # more replicates, a tighter interval
#   METHOD=gif_sd sh single_exp.sh                     # a rival in the same harness (docs/METHOD.md):
#                                                      # distdiff (default), sd, gif_sd or dafusion
#
# With arguments each expansion is split over NUM_GPUS independent jobs (--split/--total_split,
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
REPLICATES=${REPLICATES:-"1 2 3"}  # the paper averages seeds 1 2 3
for R in $REPLICATES; do
  case "$R" in ''|*[!0-9]*) echo "REPLICATES must be seed numbers such as '1 2 3', got '$REPLICATES'" >&2; exit 2;; esac
done

METHOD=${METHOD:-distdiff}
TRAIN_FLAGS=""
case "$METHOD" in  # the expand.py (and train_expand.py) flags of scripts/experiments/rows.py's rows
  distdiff) METHOD_FLAGS="";;
  sd) METHOD_FLAGS="--guidance none";;
  gif_sd) METHOD_FLAGS="--guidance gif_sd";;
  dafusion) METHOD_FLAGS="--guidance none --class_tokens learned --strength_choices 1.0 0.75 0.5 0.25"
            TRAIN_FLAGS="--synthetic_probability 0.5";;
  *) echo "METHOD must be distdiff, sd, gif_sd or dafusion, got '$METHOD'" >&2; exit 2;;
esac

LR=0.1          # the paper's lr 0.1, from scratch (docs/METHOD.md#defaults)
PRETRAINED=False
EXP=${METHOD}_${COPIES}x
SLUG=$(python -c "import sys; from distdiff.data.datasets import dataset_slug; print(dataset_slug(sys.argv[1]))" "$DATASET")
BASELINE=$(python -c "from distdiff.training.experiment import run_name; print(run_name('$BACKBONE', $PRETRAINED, $LR, 'default'))")
EXPAND_FLAGS=""
if [ "$DATASET" = digits ]; then
  EXPAND_FLAGS="--batch_size 20"  # CPU: batching sources and copies is several times faster than 1
fi

echo "== 1/4 original data: $BACKBONE on $DATASET, replicates $REPLICATES (each one's guide)"
for R in $REPLICATES; do
  python train_original.py "$DATASET" "$BACKBONE" "$LR" "$PRETRAINED" 0 --seed "$R"
done

echo "== 2/4 $METHOD expansion, ${COPIES}x, one per replicate, $NUM_GPUS job(s) each"
for R in $REPLICATES; do
  GUIDE=$(python train_original.py "$DATASET" "$BACKBONE" "$LR" "$PRETRAINED" 0 --seed "$R" --print_checkpoint)
  split=0
  pids=""
  while [ "$split" -lt "$NUM_GPUS" ]; do
    CUDA_VISIBLE_DEVICES=$split python expand.py -d "$DATASET" -a "$BACKBONE" --guide_checkpoint "$GUIDE" \
      --seed "$R" --num_images_per_prompt "$COPIES" --output_dir "expanded/$SLUG/$EXP/seed$R" \
      --split "$split" --total_split "$NUM_GPUS" $EXPAND_FLAGS $METHOD_FLAGS &
    pids="$pids $!"
    split=$((split + 1))
  done
  for pid in $pids; do wait "$pid"; done
done

echo "== 3/4 original + synthetic: $BACKBONE, replicate r on expansion r"
for R in $REPLICATES; do
  python train_expand.py "$DATASET" "$BACKBONE" "$LR" "$EXP" "$PRETRAINED" 0 --seed "$R" \
    --expanded_dir "expanded/$SLUG/$EXP/seed{seed}" $TRAIN_FLAGS
done

echo "== 4/4 results (mean ± std over replicates; each expansion paired with the original data by replicate)"
python parse_logs.py "checkpoint/$SLUG" --multi --baseline "$BASELINE"
