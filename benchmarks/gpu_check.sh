#!/bin/sh
# Everything only a GPU can show, in one run of under 8 minutes on one H100/H200/A100 (each step has
# its own time limit; a step that runs out is reported and the next one runs):
#   1. the machine (nvidia-smi, torch, diffusers);
#   2. the CUDA-only checks (benchmarks/cuda_checks.py): the tiny SD in fp16 and bf16 on the GPU
#      against fp32 on the CPU for every guidance method, expand.py end to end in fp16, and a real
#      out-of-memory error under a capped memory (the batch halves to where the dry run predicts);
#   3. the throughput table of the full-size SD v1 path (512 px, the paper's settings, random
#      weights: benchmarks/expand_throughput.py) at batch 1-16 in fp16, then bf16, then fp16 with
#      a torch.compile'd UNet, with peak memory per batch;
#   4. one guided full-size image in fp32, fp16 and bf16 (benchmarks/full_size_precision.py): the
#      fp16/bf16-vs-fp32 image difference and finite energies;
#   5. the dry run's estimate for the same full-size path (expand.py --dry_run on SD v1 configs,
#      docs/COST.md) beside what 3 measured.
# Writes OUT (default gpu_check/) with one log and JSON per step; copy the tables into
# benchmarks/RESULTS.md with the date and the GPU.
#   sh benchmarks/gpu_check.sh [OUT]
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA GPU visible to torch; run it on a GPU machine." >&2
  exit 2
fi
status=0
step() {  # NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, note a failure and go on
  name=$1; limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  start=$(date +%s)
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    echo "   ok in $(( $(date +%s) - start )) s: $OUT/$name.log"
  else
    echo "   FAILED or out of time (exit $?) after $(( $(date +%s) - start )) s: see $OUT/$name.log"
    status=1
  fi
}
step machine 30 sh -c 'nvidia-smi; python -c "import torch, diffusers; print(torch.__version__, torch.version.cuda, diffusers.__version__, torch.cuda.get_device_name())"'
step cuda_checks 80 python -m pytest -q benchmarks/cuda_checks.py
step throughput_fp16 110 python benchmarks/expand_throughput.py --device cuda --precision fp16 \
  --batch_sizes 1 2 4 8 16 --repeats 1 --output_json "$OUT/throughput_fp16.json"
step throughput_bf16 50 python benchmarks/expand_throughput.py --device cuda --precision bf16 \
  --batch_sizes 1 8 16 --repeats 1 --output_json "$OUT/throughput_bf16.json"
step throughput_compile 110 python benchmarks/expand_throughput.py --device cuda --precision fp16 --compile \
  --batch_sizes 8 16 --repeats 1 --output_json "$OUT/throughput_compile.json"
step precision 60 python benchmarks/full_size_precision.py --device cuda --modes fp32 fp16 bf16 \
  --json "$OUT/precision.json"
step dry_run 40 sh -c "python benchmarks/sd_configs.py --write_configs '$OUT/sd-v1-configs' && python expand.py \
  -d digits --model '$OUT/sd-v1-configs' -a resnet50 --raw_guide_input --batch_size 1 --dry_run"
echo "== tables: $OUT/throughput_*.log, $OUT/precision.log; the dry run's estimate: $OUT/dry_run.log"
exit $status
