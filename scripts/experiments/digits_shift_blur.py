"""digits-shift-blur: blurred targets the generator never saw (docs/shift_benchmark.md).

    python scripts/compare.py scripts/experiments/digits_shift_blur.py
"""

from rows import ROWS

from distdiff.jobs.spec import Benchmark

BENCHMARK = Benchmark(name="replicates", dataset="digits-shift-blur", experiments=ROWS, baseline="sd")
