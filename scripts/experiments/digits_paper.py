"""digits: the paper's main table and prototype ablation at small scale (docs/RESULTS.md).

    python scripts/compare.py scripts/experiments/digits_paper.py
"""

from rows import AUTOAUGMENT, CLASS_ONLY, DISTDIFF, GROUP_ONLY, SD

from distdiff.jobs.spec import Benchmark

BENCHMARK = Benchmark(name="paper", dataset="digits", experiments=(AUTOAUGMENT, SD, CLASS_ONLY, GROUP_ONLY, DISTDIFF),
                      baseline="sd")
