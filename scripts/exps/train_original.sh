#!/usr/bin/env bash
# Train on the original data with the paper's three seeds; finished seeds are skipped.
# usage: scripts/exps/train_original.sh DATASET ARCH LR PRETRAINED GPU [extra train_original.py flags]
#   e.g. scripts/exps/train_original.sh caltech-101 resnet50 0.1 False 0
set -euo pipefail
if [ "$#" -lt 5 ]; then
  echo "usage: $0 DATASET ARCH LR PRETRAINED GPU [train_original.py flags]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATASET=$1; ARCH=$2; LR=$3; PRETRAINED=$4; GPU=$5; shift 5
for SEED in 1 2 3; do
  python "$REPO/train_original.py" "$DATASET" "$ARCH" "$LR" "$PRETRAINED" "$GPU" --seed "$SEED" "$@"
done
