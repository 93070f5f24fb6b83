"""Expand a dataset with energy-guided Stable Diffusion img2img (DistDiff; docs/METHOD.md#pipeline, step 3).

    python expand.py -d DATASET [-a GUIDE_ARCH] [--num_images_per_prompt 5] [--split S --total_split N] ...
    python expand.py -d digits --max_source_images 20 --steps 10 --guidance_step 4
    python expand.py -d digits --dry_run   # the work, calls, FLOPs, memory and GPU time; writes nothing
    accelerate launch --num_processes 4 expand.py -d caltech-101   # one shard per GPU process

Writes OUT/<class>/<source stem>_expand_<i>.png (OUT defaults to expanded/<dataset>/<distdiff|sd|
distdiff_direct>_<N>x, what train_expand.py reads for EXP of the same name), OUT/manifest.jsonl
(one line per image: source, class, copy, seed, parameters, D_c/D_g before and after guidance
and of the final image), OUT/prototypes.pt and OUT/expand_config.json. Rerunning resumes.
The authors' flag names (--pretrained_model_name_or_path, --encoder_weight_path, --guidance_type,
--train_batch_size, --optimize_targets, ...) are accepted, so their expand_diff.sh carries over.
A hub id as --model is downloaded into the Hugging Face cache when it is not cached and the hub is
reachable; --local_files_only (or HF_HUB_OFFLINE=1) forbids any download.
"""

import argparse
import logging

from distdiff import cli  # first: sets the OpenMP wait policy before torch loads
from distdiff.jobs.cost import CostReport
from distdiff.jobs.expand import ExpandConfig, add_expand_arguments, run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_expand_arguments(parser)
    return parser.parse_args(argv)


def parse_config(argv=None) -> ExpandConfig:
    """The job's typed config from command-line flags."""
    return cli.config_from_flags(ExpandConfig, vars(parse_args(argv)))


def main(args: argparse.Namespace) -> dict | CostReport:
    with cli.user_errors("expand.py"):
        result = run(cli.config_from_flags(ExpandConfig, vars(args)))
    if isinstance(result, CostReport):  # --dry_run
        print(result.format())
        return result
    rate = result["written"] / result["seconds"] if result["written"] else 0.0
    print(f"shard {result['shard']}: wrote {result['written']} of {result['images']} images to {result['output_dir']} "
          f"in {result['seconds']:.1f} s ({rate:.2f} images/s)")
    print("manifest means:", {k: round(v, 4) for k, v in result["summary"].items()})
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(parse_args())
