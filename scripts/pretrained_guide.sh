#!/usr/bin/env bash
# The pretrained-guide row on the shifted digits (docs/independent_space.md): DistDiff (class + group) guided by
# ImageNet EfficientNet-Lite0 fine-tuned on the few-shot train split, beside plain SD img2img and DistDiff with the
# from-scratch smallcnn guide; the classifier trained on every expansion is the shifted table's smallcnn, seeds 1 2 3.
# Resumable: every step skips what is finished. One thread per process (the figures in the docs were made so).
#   bash scripts/pretrained_guide.sh [DATASET]        (default digits-shift-blur)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/*.py import this checkout's distdiff
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATASET=${1:-digits-shift-blur}
COPIES=5; STRENGTH=0.5; TRAIN_FLAGS="--validation"
# The fine-tune: 112 px and 30 epochs fit this project's 2-core CPU (224 px for 100 epochs would take hours);
# its learning rate is chosen on the val split among GUIDE_LRS (the paper's 0.1 and a tenth of it).
GUIDE_SIZE=112; GUIDE_EPOCHS=30; GUIDE_LRS="0.1 0.01"

echo "== $DATASET: original data (seed 1 is the smallcnn guide)"
bash scripts/exps/train_original.sh "$DATASET" smallcnn 0.1 False 0 $TRAIN_FLAGS
SMALL_GUIDE=$(python train_original.py "$DATASET" smallcnn 0.1 False 0 --seed 1 --print_checkpoint)

echo "== pretrained guides: efficientnet_lite0, lr in {$GUIDE_LRS}, $GUIDE_SIZE px, $GUIDE_EPOCHS epochs"
RUNS=()
for LR in $GUIDE_LRS; do
  GUIDE_ARGS=("$DATASET" efficientnet_lite0 "$LR" True 0 --seed 1 $TRAIN_FLAGS --image_size $GUIDE_SIZE
              --epochs $GUIDE_EPOCHS)
  python train_original.py "${GUIDE_ARGS[@]}"
  RUNS+=("$(dirname "$(python train_original.py "${GUIDE_ARGS[@]}" --print_checkpoint)")")
done
GUIDE=$(python scripts/choose_on_val.py "${RUNS[@]}")
echo "   chosen on val: $GUIDE"

for spec in "sd_${COPIES}x|-a smallcnn --guide_checkpoint $SMALL_GUIDE --guidance none" \
            "distdiff_${COPIES}x|-a smallcnn --guide_checkpoint $SMALL_GUIDE" \
            "distdiff_effguide_${COPIES}x|-a efficientnet_lite0 --guide_checkpoint $GUIDE"; do
  EXP=${spec%%|*}; FLAGS=${spec#*|}
  echo "== $EXP: expand, then smallcnn on original + synthetic"
  python expand.py -d "$DATASET" --num_images_per_prompt $COPIES --strength $STRENGTH --batch_size 20 \
    --optimize_targets global_prototype-local_prototype --output_dir "expanded/$DATASET/$EXP" --no_report $FLAGS
  bash scripts/exps/train_expand.sh "$DATASET" smallcnn 0.1 "$EXP" False 0 $TRAIN_FLAGS
done

echo "== distances in the smallcnn guide's space and in ImageNet EfficientNet-Lite0's, judge fidelity"
mkdir -p "results/$DATASET"
EXPS=(expanded/$DATASET/sd_${COPIES}x expanded/$DATASET/distdiff_${COPIES}x expanded/$DATASET/distdiff_effguide_${COPIES}x)
python scripts/report.py "${EXPS[@]}" --guide_checkpoint "$SMALL_GUIDE" --output_dir "results/$DATASET/pretrained_guide_report"
python scripts/shift_gap.py "$DATASET" --guide "$SMALL_GUIDE" --held_out test --expanded "${EXPS[@]}" \
  --json "results/$DATASET/pretrained_guide_gap.json"
python scripts/distance_table.py "results/$DATASET/pretrained_guide_report/report.json"
python parse_logs.py "checkpoint/$DATASET" --multi
