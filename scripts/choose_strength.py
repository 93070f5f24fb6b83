"""Choose the higher img2img strength of a comparison on the val split, by a rule fixed before any run.

    python scripts/choose_strength.py fashion-mnist --json results/fashion-mnist/strength_choice.json

The rule: plain SD img2img (the dataset's default model, DDIM 50, CFG 7.5) expands every val image
once per --seeds seed at the base strength (the paper's 0.5) and at each candidate; the pool-trained
pixel judge (distdiff.report.pixel_judge, independent of generator and classifiers) scores the label
fidelity of each strength; the chosen strength is the lowest candidate whose fidelity is at least
--min_drop below the base's, else the strongest candidate (distdiff.training.results.higher_strength_on_validation).
The test split is not read. Prints the strength alone on stdout; --json keeps the fidelities and
the reason, and a later call with the same settings reads it instead of generating again.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from distdiff import cli
from distdiff.utils.files import atomic_write_text
from distdiff.report.pixel_judge import JUDGE_PER_CLASS, PixelJudge, generator_label_fidelity
from distdiff.data.registry import DATASETS, dataset_spec, load_dataset
from distdiff.training.results import higher_strength_on_validation


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--base", type=float, default=0.5, help="the paper's strength")
    parser.add_argument("--candidates", type=float, nargs="+", default=[0.7, 0.9], help="higher strengths")
    parser.add_argument("--min_drop", type=float, default=0.05, help="fidelity drop that counts as clear")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one img2img copy per val image each")
    parser.add_argument("--json", default=None, help="keep the measurement and the choice here")
    return parser.parse_args(argv)


def settings(args) -> dict:
    """What the choice depends on; a --json file with other settings is measured again."""
    return {"dataset": args.dataset, "base": args.base, "candidates": sorted(args.candidates),
            "min_drop": args.min_drop, "seeds": args.seeds, "model": dataset_spec(args.dataset).sd_model}


def measure(args) -> dict[float, float]:
    """Judge label fidelity of plain img2img of the val split at each strength, pooled over seeds."""
    pool, val = load_dataset(args.dataset, "pool"), load_dataset(args.dataset, "val")
    judge = PixelJudge(pool, max_per_class=JUDGE_PER_CLASS.get(args.dataset), seed=0)
    strengths = (args.base, *sorted(args.candidates))
    per_seed = [generator_label_fidelity(dataset_spec(args.dataset).sd_model, judge, pool.classes, pool.prompt_template,
                               per_class=0, sources=val, strengths=strengths, seed=seed)["img2img"]
                for seed in args.seeds]
    return {s: float(np.mean([fid[s] for fid in per_seed])) for s in strengths}


def main(args) -> float:
    if not all(0.0 < s <= 1.0 for s in (args.base, *args.candidates)) or min(args.candidates) <= args.base:
        sys.exit(f"choose_strength.py: --candidates {args.candidates} must lie in ({args.base}, 1].")
    wanted = settings(args)
    path = Path(args.json) if args.json else None
    saved = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    if saved.get("settings") == wanted:
        print(f"chosen before ({path}): {saved['reason']}", file=sys.stderr)
        print(saved["strength"])
        return saved["strength"]
    fidelity = measure(args)
    with cli.user_errors("choose_strength.py"):
        strength, reason = higher_strength_on_validation(fidelity, base=args.base,
                                                         candidates=tuple(args.candidates), min_drop=args.min_drop)
    print(f"plain img2img label fidelity on val: {fidelity}; {reason}", file=sys.stderr)
    if path is not None:
        atomic_write_text(path, json.dumps({"settings": wanted, "fidelity": {str(k): v for k, v in fidelity.items()},
                                            "strength": strength, "reason": reason}, indent=1))
    print(strength)
    return strength


if __name__ == "__main__":
    main(parse_args())
