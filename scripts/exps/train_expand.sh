#!/usr/bin/env bash
# Train on original + synthetic data of experiment EXP with the paper's three seeds; finished seeds are skipped.
# usage: scripts/exps/train_expand.sh DATASET BACKBONE LR EXP PRETRAINED GPU [extra train_expand.py flags]
#   e.g. scripts/exps/train_expand.sh caltech-101 resnet50 0.1 distdiff_5x False 0
#   synthetic images: expanded/<dataset_slug>/<EXP>/ unless --expanded_dir DIR is passed
set -euo pipefail
if [ "$#" -lt 6 ]; then
  echo "usage: $0 DATASET BACKBONE LR EXP PRETRAINED GPU [train_expand.py flags]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATASET=$1; BACKBONE=$2; LR=$3; EXP=$4; PRETRAINED=$5; GPU=$6; shift 6
for SEED in 1 2 3; do
  python "$REPO/train_expand.py" "$DATASET" "$BACKBONE" "$LR" "$EXP" "$PRETRAINED" "$GPU" --seed "$SEED" "$@"
done
