"""digits-shift-unseen: class names the generator never saw (docs/shift_benchmark.md).

    python scripts/compare.py scripts/experiments/digits_shift_unseen.py
"""

from rows import ROWS

from distdiff.jobs.spec import Benchmark

BENCHMARK = Benchmark(name="replicates", dataset="digits-shift-unseen", experiments=ROWS, baseline="sd")
