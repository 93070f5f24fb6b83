#!/usr/bin/env bash
# The comparison table on a shifted-digits dataset (docs/shift_benchmark.md): the generator is the
# shipped digits tiny SD, the few-shot target differs from what it learnt. smallcnn from scratch
# with the paper's recipe, seeds 1 2 3 each:
#   original | AutoAugment | SD img2img (5x) | DistDiff class only | group only | class + group |
#   direct guidance | the random transform alone (rho 0: scale/bias draw clipped to eps, no gradient)
# then the distances of every expansion to held-out target images (guide features), label fidelity
# (the guide's, and a judge trained on the dataset's pool split), copy distance and energies.
# Every run uses the val split (--validation); settings were chosen on val (docs/shift_benchmark.md).
# Finished runs are skipped and expansions resume, so rerunning only fills gaps.
#   bash scripts/shift_comparison.sh                   # both gaps, side by side (logs: results/<dataset>/comparison.log)
#   bash scripts/shift_comparison.sh DATASET STRENGTH [extra expand.py flags]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/*.py import this checkout's distdiff, installed or not
if [ "$#" -eq 0 ]; then
  # The appearance gap and the semantic gap, both at the paper's strength (chosen on val,
  # docs/shift_benchmark.md). One job per core, one CPU thread each, so neither waits on the other's
  # threads (benchmarks/RESULTS.md, CPU contention); README gives this run's wall time.
  pids=()
  for DATASET in digits-shift-blur digits-shift-unseen; do
    mkdir -p "results/$DATASET"
    echo "== $DATASET: running, log in results/$DATASET/comparison.log"
    OMP_NUM_THREADS=1 bash "$0" "$DATASET" 0.5 > "results/$DATASET/comparison.log" 2>&1 & pids+=($!)
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  for DATASET in digits-shift-blur digits-shift-unseen; do
    echo "== $DATASET"
    cat "results/$DATASET/table.md" 2>/dev/null || echo "failed: see the end of results/$DATASET/comparison.log"
  done
  exit $status
fi
if [ "$#" -lt 2 ]; then
  echo "usage: $0 [DATASET STRENGTH [expand.py flags]]" >&2
  exit 2
fi
DATASET=$1; STRENGTH=$2; shift 2
ARCH=smallcnn; LR=0.1; COPIES=5
TRAIN_FLAGS="--validation"
GUIDE=$(python train_original.py "$DATASET" $ARCH $LR False 0 --seed 1 --print_checkpoint)

echo "== $DATASET: original data (seed 1 is also the guide) and AutoAugment"
bash scripts/exps/train_original.sh "$DATASET" $ARCH $LR False 0 $TRAIN_FLAGS
bash scripts/exps/train_original.sh "$DATASET" $ARCH $LR False 0 $TRAIN_FLAGS --augment autoaugment

# EXP name | expand.py flags
EXPS=()
for spec in "sd_${COPIES}x|--guidance none" \
            "distdiff_class_${COPIES}x|--optimize_targets global_prototype" \
            "distdiff_group_${COPIES}x|--optimize_targets local_prototype" \
            "distdiff_${COPIES}x|--optimize_targets global_prototype-local_prototype" \
            "distdiff_direct_${COPIES}x|--guidance direct" \
            "distdiff_rho0_${COPIES}x|--rho 0"; do
  EXP=${spec%%|*}; FLAGS=${spec#*|}
  EXPS+=("expanded/$DATASET/$EXP")
  echo "== $EXP: expand ($FLAGS, strength $STRENGTH), then train on original + synthetic"
  # shellcheck disable=SC2086  # FLAGS is a list of flags
  python expand.py -d "$DATASET" -a $ARCH --guide_checkpoint "$GUIDE" --num_images_per_prompt $COPIES \
    --strength "$STRENGTH" --batch_size 20 --output_dir "expanded/$DATASET/$EXP" $FLAGS "$@"
  bash scripts/exps/train_expand.sh "$DATASET" $ARCH $LR "$EXP" False 0 $TRAIN_FLAGS
done

echo "== distances to held-out target images (test), label fidelity, copy distance, energies"
mkdir -p "results/$DATASET"
python scripts/report.py "${EXPS[@]}" --heldout_split test --output_dir "results/$DATASET/comparison_report"
python scripts/shift_gap.py "$DATASET" --guide "$GUIDE" --held_out test --expanded "${EXPS[@]}" \
  --json "results/$DATASET/gap_test.json"
echo "== accuracy of every run"
python parse_logs.py "checkpoint/$DATASET" --multi
echo "== the comparison table (also in results/$DATASET/table.md)"
python scripts/shift_table.py "$DATASET" | tee "results/$DATASET/table.md"
