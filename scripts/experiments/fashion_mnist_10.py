"""fashion-mnist, DistDiff against SD img2img over 10 whole-pipeline replicates instead of 5 (docs/PROTOCOL.md).

    python scripts/compare.py scripts/experiments/fashion_mnist_10.py --lanes 2

The same rows, names, flags and folders as fashion_mnist.py, so replicates 1-5 are reused and only 6-10 run: a
narrower interval for the one gain of the paper's guidance that 5 replicates could detect.
"""

from rows import DISTDIFF, SD

from distdiff.jobs.spec import Benchmark

BENCHMARK = Benchmark(name="replicates10", dataset="fashion-mnist", experiments=(SD, DISTDIFF), baseline="sd",
                      replicates=tuple(range(1, 11)), report=False)
