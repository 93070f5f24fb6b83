"""Summarise finished runs: per-seed test accuracy and mean ± std over seeds.

    python parse_logs.py checkpoint/digits/smallcnn_unpretrained_lr0.1
    python parse_logs.py checkpoint/digits --multi --baseline smallcnn_unpretrained_lr0.1
    python parse_logs.py checkpoint/digits --multi --csv results.csv --plot results.png

Columns: test accuracy at the best-validation epoch, the mean test accuracy over the last 10
epochs (no selection at all), and the paper's metric, the best test accuracy over epochs (chosen
on test). ± is the sample standard deviation over seeds (ddof=1). With --multi, PATH is searched
for experiment folders (folders holding seed<N>/results.yaml) and a markdown table is printed;
--baseline adds each experiment's difference from that one, paired by seed (seed N = replicate N),
with its 95% confidence interval and the smallest difference the seeds could detect (MDE).
"""

import argparse

from distdiff import cli
from distdiff.errors import UserError
from distdiff.training.results import (find_baseline, find_experiments, format_experiment, markdown_table,
                                       plot_summaries, summarize_experiment, write_csv)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="PATH", help="an experiment folder (with --multi: a folder of them)")
    parser.add_argument("--multi", action="store_true", help="one table row per experiment found under PATH")
    parser.add_argument("--baseline", default=None, metavar="EXPERIMENT",
                        help="with --multi: the experiment (its folder relative to PATH) the others are compared "
                             "with, paired by seed")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the summary as CSV")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the table as bars with std error bars")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> list[dict]:
    with cli.user_errors("parse_logs.py"):
        if args.multi:
            folders = find_experiments(args.path)
            if not folders:
                raise UserError(f"no experiment folders (with seed<N>/results.yaml) under {args.path}.")
            summaries = [summarize_experiment(folder) for folder in folders]
            baseline = find_baseline(summaries, args.baseline, root=args.path) if args.baseline else None
            print(markdown_table(summaries, root=args.path, baseline=baseline))
            print("\n± is the sample standard deviation over seeds (ddof=1)." + (
                  " Δ: mean difference paired by seed, its 95% t interval, and the smallest difference the seeds "
                  "could detect (MDE, 80% power); 'better' / 'worse' only where the interval excludes 0."
                  if baseline else ""))
        else:
            if args.baseline:
                raise UserError("--baseline compares experiments: add --multi and pass their parent folder as PATH.")
            summaries = [summarize_experiment(args.path)]
            print(format_experiment(summaries[0]))
        if args.csv:
            write_csv(summaries, args.csv, root=args.path if args.multi else None)
            print(f"wrote {args.csv}")
        if args.plot:
            plot_summaries(summaries, args.plot, root=args.path if args.multi else None)
            print(f"wrote {args.plot}")
    return summaries


if __name__ == "__main__":
    main(parse_args())
