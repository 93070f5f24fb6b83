#!/usr/bin/env bash
# Guidance variants against plain SD img2img and the paper's DistDiff (docs/RESULTS.md, "Which setting"):
# every variant's setting is chosen on the val split from the grid below (val accuracy of smallcnn seed 1
# trained on original + that expansion, --validation; scripts/choose_on_val.py), then the chosen setting
# is trained with seeds 2 and 3 as well. Test is read only for the final table.
#   variant          grid (expand.py flags)
#   sd               --guidance none                                                 (baseline, no grid)
#   paper            DistDiff's transform guidance at the paper's defaults            (no grid)
#   identity         --transform_init identity, with --transform_resolution {1, 4} x --transform_iters {1, 3}
#   direct           --guidance direct: --guidance_period 2 (the paper's ablation), 5 with --rho_schedule linear
#   select           --guidance none --candidates 4 --select {energy, probability}     (filtering alone)
#   select_direct    the chosen direct setting with --candidates 4 --select energy     (guidance + filtering)
# Then every chosen expansion's distance to test (guide and EfficientNet-Lite0 features), judge fidelity,
# copy distance (scripts/report.py, scripts/shift_gap.py) and images/s from expand.py's own line.
# Resumable: finished runs are skipped, expansions resume. One thread; logs in results/DATASET/variants/.
#   bash scripts/variants_comparison.sh digits-shift-blur
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "$#" -ne 1 ]; then echo "usage: $0 DATASET" >&2; exit 2; fi
DATASET=$1; ARCH=smallcnn; LR=0.1; COPIES=5; STRENGTH=0.5
TRAIN_FLAGS="--validation"
OUT=results/$DATASET/variants
mkdir -p "$OUT/logs"
GUIDE=$(python train_original.py "$DATASET" $ARCH $LR False 0 --seed 1 --print_checkpoint)
RUN=${ARCH}_unpretrained_lr${LR}

echo "== $DATASET: original data (seed 1 is the guide)"
bash scripts/exps/train_original.sh "$DATASET" $ARCH $LR False 0 $TRAIN_FLAGS

expand_and_train() {  # EXP SEEDS [expand.py flags]
  local exp=$1 seeds=$2; shift 2
  echo "== $exp: $*"
  # expand.py's stdout (its "images/s" line) is kept for the table; a failure still stops the script (pipefail)
  python expand.py -d "$DATASET" -a $ARCH --guide_checkpoint "$GUIDE" --num_images_per_prompt $COPIES \
    --strength $STRENGTH --batch_size 20 --output_dir "expanded/$DATASET/$exp" --no_report "$@" \
    | tee -a "$OUT/logs/$exp.log"
  for seed in $seeds; do
    python train_expand.py "$DATASET" $ARCH $LR "$exp" False 0 --seed "$seed" $TRAIN_FLAGS
  done
}
choose() {  # EXP... -> the EXP whose seed-1 run has the best val accuracy
  local runs=()
  for exp in "$@"; do runs+=("checkpoint/$DATASET/$exp/$RUN/seed1"); done
  python scripts/choose_on_val.py "${runs[@]}" | awk -F/ '{print $(NF-3)}'
}

echo "== the grid, seed 1 each"
expand_and_train v_sd "1 2 3" --guidance none
expand_and_train v_paper "1 2 3"
for r in 1 4; do for i in 1 3; do
  expand_and_train "v_identity_r${r}_i${i}" 1 --transform_init identity --transform_resolution $r --transform_iters $i
done; done
expand_and_train v_direct_p2 1 --guidance direct --guidance_period 2
expand_and_train v_direct_p5_linear 1 --guidance direct --guidance_period 5 --rho_schedule linear
for by in energy probability; do expand_and_train "v_select_$by" 1 --guidance none --candidates 4 --select $by; done

echo "== chosen on val"
IDENTITY=$(choose v_identity_r1_i1 v_identity_r1_i3 v_identity_r4_i1 v_identity_r4_i3)
DIRECT=$(choose v_direct_p2 v_direct_p5_linear)
SELECT=$(choose v_select_energy v_select_probability)
printf '{"identity": "%s", "direct": "%s", "select": "%s"}\n' "$IDENTITY" "$DIRECT" "$SELECT" > "$OUT/chosen.json"
cat "$OUT/chosen.json"
DIRECT_FLAGS=$(python -c "import json,sys; c=json.load(open(sys.argv[1])); p=c['guidance_period']; s=c['rho_schedule']; print(f'--guidance direct --guidance_period {p} --rho_schedule {s}')" "expanded/$DATASET/$DIRECT/expand_config.json")
# shellcheck disable=SC2086
expand_and_train v_select_direct "1 2 3" $DIRECT_FLAGS --candidates 4 --select energy
for exp in "$IDENTITY" "$DIRECT" "$SELECT"; do
  for seed in 2 3; do python train_expand.py "$DATASET" $ARCH $LR "$exp" False 0 --seed $seed $TRAIN_FLAGS; done
done

echo "== distances to test, judge fidelity, copy distance of the chosen expansions"
EXPS=(expanded/$DATASET/v_sd expanded/$DATASET/v_paper "expanded/$DATASET/$IDENTITY" "expanded/$DATASET/$DIRECT"
      "expanded/$DATASET/$SELECT" expanded/$DATASET/v_select_direct)
python scripts/report.py "${EXPS[@]}" --heldout_split test --output_dir "$OUT/report"
python scripts/shift_gap.py "$DATASET" --guide "$GUIDE" --held_out test --expanded "${EXPS[@]}" --json "$OUT/gap_test.json"
python scripts/variants_table.py "$DATASET" | tee "$OUT/table.md"
