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
# Two lanes of one thread each (scripts/lib/lanes.sh). The rate of each expansion here depends on what
# the other lane ran meanwhile; the cost column comes from results/variants_speed.json when it exists
# (python benchmarks/variants_speed.py --json results/variants_speed.json: all variants on one job, in
# alternating rounds), else from these runs' own images/s.
# Resumable: finished runs are skipped, expansions resume. Logs in results/DATASET/variants/logs/.
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

source scripts/lib/lanes.sh
LOGS=$OUT/logs

expand_and_train() {  # EXP SEEDS [expand.py flags]
  local exp=$1 seeds=$2; shift 2
  echo "== $exp: $*"
  # expand.py's stdout (its "images/s" line) is kept for the table; a failure still stops the lane (pipefail)
  python expand.py -d "$DATASET" -a $ARCH --guide_checkpoint "$GUIDE" --num_images_per_prompt $COPIES \
    --strength $STRENGTH --batch_size 20 --output_dir "expanded/$DATASET/$exp" --no_report "$@" \
    | tee -a "$LOGS/$exp.log"
  for seed in $seeds; do
    python train_expand.py "$DATASET" $ARCH $LR "$exp" False 0 --seed "$seed" $TRAIN_FLAGS
  done
}
choose() {  # EXP... -> the EXP whose seed-1 run has the best val accuracy
  local runs=()
  for exp in "$@"; do runs+=("checkpoint/$DATASET/$exp/$RUN/seed1"); done
  python scripts/choose_on_val.py "${runs[@]}" | awk -F/ '{print $(NF-3)}'
}
chosen() { python -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$OUT/chosen.json" "$1"; }
train_seeds_2_3() { for exp in "$@"; do for seed in 2 3; do
  python train_expand.py "$DATASET" $ARCH $LR "$exp" False 0 --seed $seed $TRAIN_FLAGS; done; done; }

# the grid, split over two lanes of about equal work; seed 1 each, 1-3 for the two reference rows
grid_a() {
  for seed in 2 3; do python train_original.py "$DATASET" $ARCH $LR False 0 --seed $seed $TRAIN_FLAGS; done
  expand_and_train v_sd "1 2 3" --guidance none
  for i in 1 3; do expand_and_train "v_identity_r1_i${i}" 1 --transform_init identity --transform_resolution 1 --transform_iters $i; done
  expand_and_train v_direct_p2 1 --guidance direct --guidance_period 2
  expand_and_train v_select_energy 1 --guidance none --candidates 4 --select energy
}
grid_b() {
  expand_and_train v_paper "1 2 3"
  for i in 1 3; do expand_and_train "v_identity_r4_i${i}" 1 --transform_init identity --transform_resolution 4 --transform_iters $i; done
  expand_and_train v_direct_p5_linear 1 --guidance direct --guidance_period 5 --rho_schedule linear
  expand_and_train v_select_probability 1 --guidance none --candidates 4 --select probability
}
# the chosen settings: guidance + filtering (the chosen direct setting, best of 4 by energy) and seeds 2-3
seeds_a() {
  local direct_flags
  direct_flags=$(python -c "import json,sys; c=json.load(open(sys.argv[1])); p=c['guidance_period']; s=c['rho_schedule']; print(f'--guidance direct --guidance_period {p} --rho_schedule {s}')" "expanded/$DATASET/$(chosen direct)/expand_config.json")
  # shellcheck disable=SC2086
  expand_and_train v_select_direct "1 2 3" $direct_flags --candidates 4 --select energy
  train_seeds_2_3 "$(chosen identity)"
}
seeds_b() { train_seeds_2_3 "$(chosen direct)" "$(chosen select)"; }
expansions() { for exp in v_sd v_paper "$(chosen identity)" "$(chosen direct)" "$(chosen select)" v_select_direct; do
  echo "expanded/$DATASET/$exp"; done; }
# shellcheck disable=SC2046  # one folder per line, no spaces
report_lane() { python scripts/report.py $(expansions) --heldout_split test --output_dir "$OUT/report"; }
# shellcheck disable=SC2046
gap_lane() { python scripts/shift_gap.py "$DATASET" --guide "$GUIDE" --held_out test --expanded $(expansions) --json "$OUT/gap_test.json"; }

start=$(date +%s)
echo "== $DATASET 1/4: the guide (original data, seed 1)"
python train_original.py "$DATASET" $ARCH $LR False 0 --seed 1 $TRAIN_FLAGS
echo "== 2/4: the grid, seed 1 each | original seeds 2-3"
run_lanes "$LOGS" lane_grid_a grid_a lane_grid_b grid_b
IDENTITY=$(choose v_identity_r1_i1 v_identity_r1_i3 v_identity_r4_i1 v_identity_r4_i3)
DIRECT=$(choose v_direct_p2 v_direct_p5_linear)
SELECT=$(choose v_select_energy v_select_probability)
printf '{"identity": "%s", "direct": "%s", "select": "%s"}\n' "$IDENTITY" "$DIRECT" "$SELECT" > "$OUT/chosen.json"
echo "   chosen on val: $(cat "$OUT/chosen.json")"
echo "== 3/4: direct + selection; seeds 2-3 of the chosen settings"
run_lanes "$LOGS" lane_seeds_a seeds_a lane_seeds_b seeds_b
echo "== 4/4: distances to test, judge fidelity, copy distance of the chosen expansions"
run_lanes "$LOGS" lane_report report_lane lane_gap gap_lane
echo "== the table (also in $OUT/table.md); $(( ($(date +%s) - start) / 60 )) min this call"
SPEED=(); if [ -f results/variants_speed.json ]; then SPEED=(--speed results/variants_speed.json); fi
python scripts/variants_table.py "$DATASET" "${SPEED[@]}" | tee "$OUT/table.md"
