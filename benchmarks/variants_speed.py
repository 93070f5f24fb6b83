"""Expansion speed of each experiment of a benchmark spec against its baseline, in alternating rounds.

    python benchmarks/variants_speed.py --spec scripts/experiments/variants.py --rounds 3 --json results/variants_speed.json
    python benchmarks/variants_speed.py --spec scripts/experiments/digits_shift_blur.py --no_energy_log_of sd distdiff

The experiments and their flags are the spec's (every setting of a grid; scripts/compare.py --speed
reads the JSON for its cost column). Each runs the same `expand.py` job on the shipped tiny SD
(digits, --max_source_images 10, 2 copies: one batch of 20, DDIM 50 at strength 0.5, 1 CPU thread)
with the same guide; each round runs every experiment once, in an order that is reversed every
other round, so a change of machine load hits all of them. The rate is expand.py's own "images/s"
(sampling time, latent cache warm, model loading excluded); the ratio is against the spec's
baseline in the same round. --no_energy_log_of NAME adds NAME_no_energy_log (NAME's flags plus
--no_energy_log): the cost of the manifest's energy records, stated beside that flag. Prints a
markdown table.
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

from distdiff.jobs.spec import Experiment, Grid, load_benchmark
from distdiff.utils.files import atomic_write_text

DEFAULT_SPEC = REPO / "scripts" / "experiments" / "variants.py"
NO_ENERGY_LOG = "_no_energy_log"


def spec_variants(spec: str | Path, no_energy_log_of: list[str] = ()) -> tuple[dict[str, list[str]], str]:
    """({experiment name: expand.py flags} of every expansion in the spec, every grid setting included, plus the
    requested *_no_energy_log variants), and the baseline's name."""
    bench = load_benchmark(spec)
    variants = {}
    for item in bench.experiments:
        if isinstance(item, Grid):
            variants.update({item.experiment(s).name: list(item.experiment(s).flags) for s in item.settings})
        elif isinstance(item, Experiment):
            variants[item.name] = list(item.flags)
    if bench.baseline not in variants:
        raise SystemExit(f"variants_speed.py: {spec}'s baseline '{bench.baseline}' makes no expansion; the ratios "
                         f"need an expansion to divide by.")
    for name in no_energy_log_of:
        if name not in variants:
            raise SystemExit(f"variants_speed.py: --no_energy_log_of {name} is none of {sorted(variants)}.")
        variants[name + NO_ENERGY_LOG] = [*variants[name], "--no_energy_log"]
    return variants, bench.baseline


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(DEFAULT_SPEC), help="a benchmark spec file (scripts/experiments/*.py)")
    parser.add_argument("--no_energy_log_of", nargs="*", default=[], help="experiments also timed with "
                        "--no_energy_log")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=None, help="time only these experiments (and the baseline)")
    parser.add_argument("--sources", type=int, default=10, help="--max_source_images (x copies = one batch of 20)")
    parser.add_argument("--copies", type=int, default=2, help="--num_images_per_prompt")
    parser.add_argument("--batch_size", type=int, default=20)
    parser.add_argument("--work_dir", default=None, help="default: a temporary folder")
    parser.add_argument("--json", default=None, help="also write {experiment: {rates, ratios, median_ratio}} here "
                        "(scripts/compare.py --speed reads it)")
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


def ratios_to(rates: dict[str, list[float]], baseline: str) -> dict[str, dict]:
    """Each variant's per-round images/s, its ratio to the baseline's rate in the same round, and the median ratio."""
    result = {}
    for name, values in rates.items():
        ratios = [v / base for v, base in zip(values, rates[baseline])]
        result[name] = {"rates": values, "ratios": ratios, "median_ratio": statistics.median(ratios)}
    return result


def main(args) -> dict[str, dict]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="variants_speed_"))
    guide = work / "guide" / "digits" / "smallcnn_unpretrained_lr0.1" / "seed1" / "model_best.pth.tar"
    if not guide.is_file():  # the guide's accuracy does not matter for speed: one epoch
        run([sys.executable, "train_original.py", "digits", "smallcnn", "0.1", "False", "0", "--epochs", "1",
             "--output_root", str(work / "guide"), "--num_threads", "1"], REPO)
    variants, baseline = spec_variants(args.spec, args.no_energy_log_of)
    unknown = set(args.only or ()) - set(variants)
    if unknown:
        raise SystemExit(f"variants_speed.py: --only {sorted(unknown)} are not in {args.spec}: {sorted(variants)}.")
    names = [baseline, *[v for v in (args.only or variants) if v != baseline]]
    expand(variants[baseline], guide, work / "warm", work / "cache", args)  # latent cache and imports, untimed
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r, name in tqdm(schedule(names, args.rounds), desc="variant jobs", unit="job"):
        rates[name].append(expand(variants[name], guide, work / f"{name}-r{r}", work / "cache", args))
    result = ratios_to(rates, baseline)
    print(f"\n| variant | images/s per round | × {baseline} per round | median × {baseline} |\n|---|---|---|---|")
    for name, row in result.items():
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in row['rates'])} | "
              f"{', '.join(f'{x:.2f}' for x in row['ratios'])} | {row['median_ratio']:.2f} |")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(parse_args())
