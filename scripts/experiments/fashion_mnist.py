"""fashion-mnist: real photos of clothing, a generator trained on a disjoint pool (docs/fashion_mnist.md).

    python scripts/compare.py scripts/experiments/fashion_mnist.py
"""

from rows import ROWS

from distdiff.jobs.spec import Benchmark

BENCHMARK = Benchmark(name="replicates", dataset="fashion-mnist", experiments=ROWS, baseline="sd")
