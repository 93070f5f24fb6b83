"""Train a tiny Stable-Diffusion-architecture model on a dataset's generator pool.

Examples (pass --num_threads 1 when other jobs share the CPU):
    python scripts/train_tiny_sd.py --seed 0                          # digits, ~12 min on 2 idle cores
    python scripts/train_tiny_sd.py --dataset fashion-mnist --seed 0  # fashion-mnist, ~50 min at 1 thread
Trains only on load_dataset(DATASET, "pool"), which is disjoint from train/val/test, and writes the
model where expand.py -d DATASET looks for it by default. Each dataset's recipe (architecture and
the flags that differ from the digits defaults) is RECIPES in distdiff/tiny_sd/train.py; a flag
given here wins. Interrupted runs resume from --state_dir with the same flags.
"""

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import torch

from distdiff.data.registry import dataset_spec, load_dataset
from distdiff.tiny_sd.train import RECIPES, TRAIN_DEFAULTS, recipe_hyperparameters, train_tiny_sd

# Flags of type int or float, each defaulting to the dataset's recipe (see distdiff/tiny_sd/train.py).
HYPERPARAMETER_HELP = {
    "vae_steps": "stage 1 (VAE) optimisation steps",
    "vae_batch_size": "stage 1 batch size",
    "vae_lr": "stage 1 peak learning rate",
    "kl_weight": "weight of the VAE's KL term per latent element",
    "max_shift": "random translation augmentation, in pixels",
    "latent_copies": "encoded versions of each pool image for stage 2",
    "unet_steps": "stage 2 (UNet + text encoder) optimisation steps",
    "unet_batch_size": "stage 2 batch size",
    "unet_lr": "stage 2 peak learning rate",
    "warmup_steps": "linear learning-rate warmup steps of each stage",
    "prompt_dropout": "fraction of stage 2 samples trained with the empty prompt",
    "snr_gamma": "Min-SNR-gamma loss weighting",
    "ema_max_decay": "maximum EMA decay of the stage 2 weights",
    "save_every": "steps between resumable state saves",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(RECIPES), help="whose pool to train on")
    parser.add_argument("--output_dir", default=None,
                        help="model folder to write (default: the dataset's default --model of expand.py)")
    parser.add_argument("--state_dir", default=None, help="resumable training state (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=2,
                        help="CPU threads for torch; 1 is far faster than 2 on a CPU busy with other jobs")
    for name, text in HYPERPARAMETER_HELP.items():
        digits = TRAIN_DEFAULTS[name]
        parser.add_argument(f"--{name}", type=type(digits), default=None,
                            help=f"{text} (default: the dataset's recipe; digits {digits})")
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir or dataset_spec(args.dataset).sd_model
    args.state_dir = args.state_dir or RECIPES[args.dataset].state_dir
    recipe = recipe_hyperparameters(args.dataset)
    for name in HYPERPARAMETER_HELP:
        if getattr(args, name) is None:
            setattr(args, name, recipe[name])
    return args


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in HYPERPARAMETER_HELP:
        if getattr(args, name) < 0:
            sys.exit(f"--{name} must be >= 0, got {getattr(args, name)}.")
    if not 0.0 <= args.prompt_dropout < 1.0:
        sys.exit(f"--prompt_dropout must be in [0, 1), got {args.prompt_dropout}.")
    if Path(args.output_dir).is_file():
        sys.exit(f"--output_dir {args.output_dir} is a file; pass a folder path.")
    torch.set_num_threads(args.num_threads)
    start = time.time()
    pool = load_dataset(args.dataset, "pool")  # the generator pool only: never train/val/test
    summary = train_tiny_sd(pool, args.output_dir, seed=args.seed, state_dir=args.state_dir,
                            preset=RECIPES[args.dataset].preset,
                            **{name: getattr(args, name) for name in HYPERPARAMETER_HELP})
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"trained {args.dataset} on {summary['num_images']} pool images in {time.time() - start:.0f} s wall "
          f"(this run, data loading included; {args.num_threads} threads), peak memory {peak_mib:.0f} MiB; "
          f"final losses VAE {summary['vae_loss']:.4f}, UNet {summary['unet_loss']:.4f}; "
          f"latent scaling factor {summary['scaling_factor']:.4f}; saved to {args.output_dir}")


if __name__ == "__main__":
    main(parse_args())
