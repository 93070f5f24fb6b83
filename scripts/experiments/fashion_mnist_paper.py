"""Fashion-MNIST: the paper's table at the paper's strength and at the higher one (docs/fashion_mnist.md).

    python scripts/compare.py scripts/experiments/fashion_mnist_paper.py

0.9 is what scripts/choose_strength.py's rule, fixed before any run, picked on val (docs/fashion_mnist.md).
"""

from rows import AUTOAUGMENT, DIRECT, DISTDIFF, RHO0, SD

from distdiff.jobs.spec import Benchmark, Experiment

HIGH = ("--strength", "0.9")
BENCHMARK = Benchmark(name="paper", dataset="fashion-mnist", baseline="sd", judge=True, experiments=(
    AUTOAUGMENT, SD, DISTDIFF,
    Experiment("sd_s09", "SD img2img, strength 0.9", (*SD.flags, *HIGH)),
    Experiment("distdiff_s09", "DistDiff, strength 0.9", (*DISTDIFF.flags, *HIGH)),
    DIRECT, RHO0))
