"""Expansion speed of each guidance variant against plain SD img2img, in alternating rounds.

    python benchmarks/variants_speed.py --rounds 3

The variants and their flags are the grid of scripts/variants_comparison.sh. Each runs the same
`expand.py` job on the shipped tiny SD (digits, --max_source_images 10, 2 copies: one batch of 20,
DDIM 50 at strength 0.5, 1 CPU thread) with the same guide; each round runs every variant once, in
an order that is reversed every other round, so a change of machine load hits all of them. The rate
is expand.py's own "images/s" (sampling time, latent cache warm, model loading excluded); the ratio
is against plain SD img2img in the same round. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from pipeline_before_after import RATE, REPO, run
from tqdm import tqdm

from distdiff.utils.files import atomic_write_text

VARIANTS = {  # name: expand.py flags (scripts/variants_comparison.sh)
    "v_sd": ["--guidance", "none"],
    "v_paper": [],
    "v_identity_r1_i1": ["--transform_init", "identity", "--transform_resolution", "1", "--transform_iters", "1"],
    "v_identity_r1_i3": ["--transform_init", "identity", "--transform_resolution", "1", "--transform_iters", "3"],
    "v_identity_r4_i1": ["--transform_init", "identity", "--transform_resolution", "4", "--transform_iters", "1"],
    "v_identity_r4_i3": ["--transform_init", "identity", "--transform_resolution", "4", "--transform_iters", "3"],
    "v_direct_p2": ["--guidance", "direct", "--guidance_period", "2"],
    "v_direct_p5_linear": ["--guidance", "direct", "--guidance_period", "5", "--rho_schedule", "linear"],
    "v_select_energy": ["--guidance", "none", "--candidates", "4", "--select", "energy"],
    "v_select_probability": ["--guidance", "none", "--candidates", "4", "--select", "probability"],
    "v_select_direct_p2": ["--guidance", "direct", "--guidance_period", "2", "--candidates", "4", "--select", "energy"],
    "v_select_direct_p5_linear": ["--guidance", "direct", "--guidance_period", "5", "--rho_schedule", "linear",
                                  "--candidates", "4", "--select", "energy"],
    # the cost of the manifest's energy records (EnergyRecorder: one extra CFG UNet step and two decodes + guide
    # passes per image), the price stated beside --no_energy_log
    "v_paper_no_energy_log": ["--no_energy_log"],
    "v_sd_no_energy_log": ["--guidance", "none", "--no_energy_log"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sources", type=int, default=10, help="--max_source_images (x copies = one batch of 20)")
    parser.add_argument("--copies", type=int, default=2, help="--num_images_per_prompt")
    parser.add_argument("--batch_size", type=int, default=20)
    parser.add_argument("--work_dir", default=None, help="default: a temporary folder")
    parser.add_argument("--json", default=None, help="also write {variant: {rates, ratios, median_ratio}} here "
                        "(scripts/variants_table.py --speed reads it)")
    return parser.parse_args(argv)


def expand(flags: list[str], guide: Path, out: Path, cache: Path, args) -> float:
    """One expand.py job with `flags`; its images/s."""
    stdout = run([sys.executable, "expand.py", "-d", "digits", "--guide_checkpoint", str(guide),
                  "--max_source_images", str(args.sources), "--num_images_per_prompt", str(args.copies),
                  "--strength", "0.5", "--batch_size", str(args.batch_size), "--num_threads", "1",
                  "--output_dir", str(out), "--cache_dir", str(cache), "--no_report", *flags], REPO)
    return float(RATE.search(stdout).group(2))


def schedule(names: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, variant) jobs in run order: every variant once per round, the order reversed every other round."""
    return [(r, name) for r in range(rounds) for name in (names if r % 2 == 0 else names[::-1])]


def ratios_to_sd(rates: dict[str, list[float]]) -> dict[str, dict]:
    """Each variant's per-round images/s, its ratio to v_sd's rate in the same round, and the median ratio."""
    result = {}
    for name, values in rates.items():
        ratios = [v / sd for v, sd in zip(values, rates["v_sd"])]
        result[name] = {"rates": values, "ratios": ratios, "median_ratio": statistics.median(ratios)}
    return result


def main(args) -> dict[str, dict]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="variants_speed_"))
    guide = work / "guide" / "digits" / "smallcnn_unpretrained_lr0.1" / "seed1" / "model_best.pth.tar"
    if not guide.is_file():  # the guide's accuracy does not matter for speed: one epoch
        run([sys.executable, "train_original.py", "digits", "smallcnn", "0.1", "False", "0", "--epochs", "1",
             "--output_root", str(work / "guide"), "--num_threads", "1"], REPO)
    names = ["v_sd", *[v for v in args.variants if v != "v_sd"]]
    expand(VARIANTS["v_sd"], guide, work / "warm", work / "cache", args)  # latent cache and imports, untimed
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r, name in tqdm(schedule(names, args.rounds), desc="variant jobs", unit="job"):
        rates[name].append(expand(VARIANTS[name], guide, work / f"{name}-r{r}", work / "cache", args))
    result = ratios_to_sd(rates)
    print("\n| variant | images/s per round | × SD per round | median × SD |\n|---|---|---|---|")
    for name, row in result.items():
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in row['rates'])} | "
              f"{', '.join(f'{x:.2f}' for x in row['ratios'])} | {row['median_ratio']:.2f} |")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(parse_args())
