"""The paper's rivals beside DistDiff: GIF-SD, DA-Fusion and DistDiff on DA-Fusion's tokens (docs/METHOD.md).

    python scripts/compare.py scripts/experiments/rivals.py                                     # digits-shift-blur
    python scripts/compare.py scripts/experiments/rivals.py --dataset digits-shift-unseen
    python scripts/compare.py scripts/experiments/rivals.py --dataset fashion-mnist

SD img2img and DistDiff are the replicate specs' own runs (same names, flags and folders), so a
dataset whose replicates have run adds only the rival rows. DA-Fusion learns its tokens per
replicate (textual inversion, 1000 steps per class: about 80 ms a step on one thread of this
project's CPU for the tiny models, some 14 min per replicate for 10 classes; benchmarks/RESULTS.md);
DistDiff on its tokens reuses them from the latent cache's class_tokens/ (the same model, split, steps and seed).
"""

from rows import DISTDIFF, RIVAL_ROWS, SD

from distdiff.jobs.spec import Benchmark

BENCHMARK = Benchmark(name="rivals", dataset="digits-shift-blur", experiments=(SD, DISTDIFF, *RIVAL_ROWS),
                      baseline="sd", judge=True)
