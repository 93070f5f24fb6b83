"""A shifted-digits dataset: the paper's table and ablations, with the pool-trained judge (docs/shift_benchmark.md).

    python scripts/compare.py scripts/experiments/shift_paper.py                                # digits-shift-blur
    python scripts/compare.py scripts/experiments/shift_paper.py --dataset digits-shift-unseen
"""

from rows import PAPER_ROWS

from distdiff.jobs.spec import Benchmark

BENCHMARK = Benchmark(name="paper", dataset="digits-shift-blur", experiments=PAPER_ROWS, baseline="sd", judge=True)
