"""Train a classifier on original + synthetic (expanded) images.

    python train_expand.py DATASET ARCH LR EXP PRETRAINED GPU [--expanded_dir DIR] [--seed N] ...
    python train_expand.py digits smallcnn 0.1 distdiff_5x False 0
    python train_expand.py digits smallcnn 0.1 dafusion_10x False 0 --synthetic_probability 0.5

--synthetic_probability P trains as DA-Fusion does: each epoch is the original images, each replaced with
probability P by one of its own synthetic copies (default: original + synthetic images together).

Synthetic images are read from --expanded_dir (default expanded/<dataset_slug>/<EXP>/, laid out
<class>/<stem>_expand_<i>.png as expand.py writes them). Writes
checkpoint/<dataset>/<EXP>/<arch>_<pretrained|unpretrained>_lr<lr>[_<augment>]/seed<N>/.
"""

import argparse
import logging

from distdiff import cli  # first: sets the OpenMP wait policy before torch loads
from distdiff.training.experiment import RunConfig, add_train_arguments, checkpoint_path, run_training


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, expand=True)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict | None:
    config = cli.config_from_flags(RunConfig, vars(args))
    if args.print_checkpoint:
        print(checkpoint_path(config))
        return None
    with cli.user_errors("train_expand.py"):
        return run_training(config)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(parse_args())
