"""Every option of ours, each chosen on val, against SD img2img and the paper's DistDiff (docs/variants.md).

    python scripts/compare.py scripts/experiments/variants.py                                   # digits-shift-blur
    python scripts/compare.py scripts/experiments/variants.py --dataset fashion-mnist
    python benchmarks/variants_speed.py --spec scripts/experiments/variants.py --json results/variants_speed.json
    python scripts/compare.py scripts/experiments/variants.py --stages table --speed results/variants_speed.json
"""

from rows import VARIANT_ROWS

from distdiff.jobs.spec import Benchmark

BENCHMARK = Benchmark(name="variants", dataset="digits-shift-blur", experiments=VARIANT_ROWS, baseline="sd",
                      judge=True)
