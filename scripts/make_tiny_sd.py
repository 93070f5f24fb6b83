"""Write a randomly initialised tiny Stable Diffusion model in diffusers' folder format.

Example: python scripts/make_tiny_sd.py --output_dir checkpoint/tiny-sd-random
The folder loads like CompVis/stable-diffusion-v1-4 (e.g. `python expand.py -d digits --model
checkpoint/tiny-sd-random`) and is meant for tests and smoke runs; checkpoint/tiny-sd-digits/ is the
trained one.
"""

import argparse
import sys
from pathlib import Path

from distdiff.tiny_sd.model import PRESETS, save_tiny_sd


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="architecture size")
    return parser.parse_args(argv)


def main(args):
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        sys.exit(f"--output_dir {output_dir} is a file; pass a folder path.")
    path = save_tiny_sd(output_dir, seed=args.seed, preset=args.preset)
    print(f"wrote tiny SD ({args.preset}, seed {args.seed}) to {path}")


if __name__ == "__main__":
    main(parse_args())
