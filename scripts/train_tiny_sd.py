"""Train the tiny Stable-Diffusion-architecture digits model on the digits generator pool.

Example (about 12 minutes on 2 idle CPU cores; pass --num_threads 1 when other jobs share the CPU):
    python scripts/train_tiny_sd.py --output_dir checkpoint/tiny-sd-digits --seed 0
Trains only on load_dataset("digits", "pool"), which is disjoint from digits train/val/test.
Interrupted runs resume from --state_dir with the same flags.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from distdiff.registry import load_dataset
from distdiff.tiny_sd_train import TRAIN_DEFAULTS, train_tiny_sd

# Flags of type int or float, each defaulting to TRAIN_DEFAULTS (see distdiff/tiny_sd_train.py).
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
    parser.add_argument("--output_dir", default="checkpoint/tiny-sd-digits", help="model folder to write")
    parser.add_argument("--state_dir", default="runs/train_tiny_sd", help="resumable training state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=2,
                        help="CPU threads for torch; 1 is far faster than 2 on a CPU busy with other jobs")
    for name, text in HYPERPARAMETER_HELP.items():
        default = TRAIN_DEFAULTS[name]
        parser.add_argument(f"--{name}", type=type(default), default=default, help=f"{text} (default {default})")
    return parser.parse_args(argv)


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
    pool = load_dataset("digits", "pool")  # the generator pool only: never train/val/test
    start = time.time()
    summary = train_tiny_sd(pool, args.output_dir, seed=args.seed, state_dir=args.state_dir,
                            **{name: getattr(args, name) for name in HYPERPARAMETER_HELP})
    print(f"trained on {summary['num_images']} pool images in {time.time() - start:.0f} s; "
          f"final losses VAE {summary['vae_loss']:.4f}, UNet {summary['unet_loss']:.4f}; "
          f"latent scaling factor {summary['scaling_factor']:.4f}; saved to {args.output_dir}")


if __name__ == "__main__":
    main(parse_args())
