"""Print the checkpoint, among finished runs, whose best validation accuracy is highest (never the test split).

    python scripts/choose_on_val.py checkpoint/D/efficientnet_lite0_pretrained_lr0.1/seed1 \
        checkpoint/D/efficientnet_lite0_pretrained_lr0.01/seed1
"""

import argparse

from distdiff import cli
from distdiff.models.classifiers import CHECKPOINT_NAME
from distdiff.training.results import best_on_validation


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="seed folders written by train_original.py --validation")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> str:
    with cli.user_errors("choose_on_val.py"):
        chosen = str(best_on_validation(args.runs) / CHECKPOINT_NAME)
    print(chosen)
    return chosen


if __name__ == "__main__":
    main(parse_args())
