"""Run a benchmark spec: whole-pipeline replicates of each experiment, choices on val, the paired table.

    python scripts/compare.py scripts/experiments/digits_shift_blur.py
    python scripts/compare.py scripts/experiments/fashion_mnist.py --lanes 2 --stages table

The spec file defines BENCHMARK = distdiff.jobs.compare.Benchmark(...) (its docstring says what each
stage does). Every stage resumes: rerunning skips finished trainings and resumes expansions. Job
logs go to results/<dataset>/<benchmark>/logs/, the table to results/<dataset>/<benchmark>/table.md.
"""

import argparse
import logging

from distdiff import cli
from distdiff.errors import UserError
from distdiff.jobs.compare import load_benchmark, run_benchmark

STAGES = ("guides", "expand", "choose", "report", "table")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="a benchmark spec file (scripts/experiments/*.py)")
    parser.add_argument("--lanes", type=int, default=2, help="jobs at once, one thread each (this CPU: 2 cores)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="which stages to run")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> str:
    with cli.user_errors("compare.py"):
        if args.lanes < 1:
            raise UserError(f"--lanes must be at least 1, got {args.lanes}.")
        text = run_benchmark(load_benchmark(args.spec), lanes=args.lanes, stages=args.stages)
    print(text)
    return text


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main(parse_args())
