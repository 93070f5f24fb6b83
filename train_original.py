"""Train a classifier on a dataset's original training images (the guide model, or the baseline).

    python train_original.py DATASET ARCH LR PRETRAINED GPU [--seed N] [--epochs E] ...
    python train_original.py digits smallcnn 0.1 False 0

Writes checkpoint/<dataset>/<arch>_<pretrained|unpretrained>_lr<lr>[_<augment>]/seed<N>/ with
model_best.pth.tar, log.txt and results.yaml; rerunning resumes an unfinished run and skips a
finished one (--overwrite reruns it). --print_checkpoint prints the model_best.pth.tar path of
the run the arguments describe and exits: seed 1 with LR 0.1, PRETRAINED False is expand.py's
default guide, and the shell scripts find it this way.
"""

import argparse
import logging

from distdiff import cli  # first: sets the OpenMP wait policy before torch loads
from distdiff.training.experiment import RunConfig, add_train_arguments, checkpoint_path, run_training


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, expand=False)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict | None:
    config = cli.config_from_flags(RunConfig, vars(args))
    if args.print_checkpoint:
        print(checkpoint_path(config))
        return None
    with cli.user_errors("train_original.py"):
        return run_training(config)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(parse_args())
