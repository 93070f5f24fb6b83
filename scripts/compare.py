"""Run a benchmark spec: whole-pipeline replicates of each experiment, choices on val, the paired table.

    python scripts/compare.py scripts/experiments/digits_shift_blur.py
    python scripts/compare.py scripts/experiments/shift_paper.py --dataset digits-shift-unseen
    python scripts/compare.py scripts/experiments/fashion_mnist.py --lanes 2 --stages table

The spec file defines BENCHMARK = distdiff.jobs.spec.Benchmark(...) (distdiff/jobs/compare.py's
docstring says what each stage does). Every stage resumes: rerunning skips finished trainings and
resumes expansions. Job logs go to results/<dataset>/<benchmark>/logs/, the table to
results/<dataset>/<benchmark>/table.md.
"""

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from distdiff import cli
from distdiff.data.registry import dataset_spec
from distdiff.errors import UserError
from distdiff.jobs.compare import STAGES, run_benchmark
from distdiff.jobs.spec import load_benchmark


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="a benchmark spec file (scripts/experiments/*.py)")
    parser.add_argument("--dataset", default=None, help="run the spec on this dataset instead of its own")
    parser.add_argument("--lanes", type=int, default=2, help="jobs at once, one thread each (this CPU: 2 cores)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="which stages to run")
    parser.add_argument("--speed", default=None, help="benchmarks/variants_speed.py --spec SPEC --json output: adds "
                        "each row's images/s relative to the baseline's (alternating rounds on one job)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> str:
    with cli.user_errors("compare.py"):
        if args.lanes < 1:
            raise UserError(f"--lanes must be at least 1, got {args.lanes}.")
        bench = load_benchmark(args.spec)
        if args.dataset is not None:
            dataset_spec(args.dataset)  # an unknown name is an error naming the known ones
            bench = dataclasses.replace(bench, dataset=args.dataset)
        speed = None
        if args.speed is not None:
            if not Path(args.speed).is_file():
                raise UserError(f"--speed {args.speed} not found; make it with `python benchmarks/variants_speed.py "
                                f"--spec {args.spec} --json {args.speed}`.")
            speed = json.loads(Path(args.speed).read_text())
        text = run_benchmark(bench, lanes=args.lanes, stages=args.stages, speed=speed)
    print(text)
    return text


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main(parse_args())
