#!/bin/sh
# The paper's comparison (the paper's experiments, main results table) at small scale: digits few-shot (10 images per class), smallcnn
# from scratch with the paper's recipe, seeds 1 2 3 each:
#   original only | AutoAugment | SD img2img without guidance (5x) |
#   DistDiff class energy only | group energy only | class + group (5x each)
# Every run uses the digits val split (--validation), so nothing is chosen on test; the table
# shows both the paper's metric (best test accuracy over epochs) and the test accuracy at the
# best validation epoch. Finished runs are skipped, so rerunning only fills gaps.
#   sh scripts/digits_comparison.sh [extra expand.py flags]
set -eu
cd "$(dirname "$0")/.."
ARCH=smallcnn; LR=0.1; COPIES=5
TRAIN_FLAGS="--validation"
GUIDE=$(python train_original.py digits $ARCH $LR False 0 --seed 1 --print_checkpoint)

echo "== original data (seed 1 is also the guide) and AutoAugment"
bash scripts/exps/train_original.sh digits $ARCH $LR False 0 $TRAIN_FLAGS
bash scripts/exps/train_original.sh digits $ARCH $LR False 0 $TRAIN_FLAGS --augment autoaugment

# EXP name | expand.py flags
for spec in "sd_${COPIES}x|--guidance none" \
            "distdiff_class_${COPIES}x|--optimize_targets global_prototype" \
            "distdiff_group_${COPIES}x|--optimize_targets local_prototype" \
            "distdiff_${COPIES}x|--optimize_targets global_prototype-local_prototype"; do
  EXP=${spec%%|*}; FLAGS=${spec#*|}
  echo "== $EXP: expand ($FLAGS), then train on original + synthetic"
  # shellcheck disable=SC2086  # FLAGS is a list of flags
  python expand.py -d digits -a $ARCH --guide_checkpoint "$GUIDE" --num_images_per_prompt $COPIES \
    --batch_size 20 --output_dir "expanded/digits/$EXP" $FLAGS "$@"
  bash scripts/exps/train_expand.sh digits $ARCH $LR "$EXP" False 0 $TRAIN_FLAGS
done

echo "== results"
python parse_logs.py checkpoint/digits --multi
