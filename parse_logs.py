"""Summarise finished runs: per-seed best test accuracy and mean ± std over seeds.

    python parse_logs.py checkpoint/digits/smallcnn_unpretrained_lr0.1
    python parse_logs.py checkpoint/digits --multi --csv results.csv
    python parse_logs.py checkpoint/digits --multi --plot results.png

± is the sample standard deviation over seeds (ddof=1). With --multi, PATH is searched for
experiment folders (folders holding seed<N>/results.yaml) and a markdown table is printed.
"""

import argparse

from distdiff import cli
from distdiff.errors import UserError
from distdiff.training.results import (find_experiments, format_experiment, markdown_table, plot_summaries,
                                       summarize_experiment, write_csv)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="PATH", help="an experiment folder (with --multi: a folder of them)")
    parser.add_argument("--multi", action="store_true", help="one table row per experiment found under PATH")
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
            print(markdown_table(summaries, root=args.path))
            print("\n± is the sample standard deviation over seeds (ddof=1).")
        else:
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
