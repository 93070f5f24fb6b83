"""The guidance-variants tables from what scripts/variants_comparison.sh wrote.

    python scripts/variants_table.py digits-shift-blur

First the val grid (seed 1's best val accuracy per setting: what chose each variant's setting),
then one row per variant at its chosen setting: test accuracy over seeds (at the best-val epoch,
and the paper's best epoch), distances to the test split in the guide's and in ImageNet
EfficientNet-Lite0's features, judge and guide label fidelity, copy distance, and images/s of its
expansion (expand.py's own figure, the same machine and run) relative to plain SD img2img.
Last, the target of docs/variants.md applied to each variant: at least 1 point of test accuracy at
the best-val epoch over plain SD img2img, with the paired 95% interval over seeds excluding 0
(distdiff.training.comparison), and a lower FID to test in EfficientNet-Lite0's features. A missing
input is an error naming the command that makes it.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from distdiff import cli
from distdiff.errors import UserError
from distdiff.training.results import format_value, paired_against, read_results, summarize_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/shift_table.py, beside this script
from shift_table import RUN, independent_distance, independent_overall  # noqa: E402

COMMAND = "bash scripts/variants_comparison.sh {dataset}"
GRID = ("v_sd", "v_paper", "v_identity_r1_i1", "v_identity_r1_i3", "v_identity_r4_i1", "v_identity_r4_i3",
        "v_direct_p2", "v_direct_p5_linear", "v_select_energy", "v_select_probability", "v_select_direct")
ACCURACY = ("val_selected_accuracy", "best_accuracy")  # the two accuracy columns, in order
MARGIN = 1.0  # points of test accuracy at the best-val epoch over SD img2img: the target in docs/variants.md
RATE = re.compile(r"wrote (\d+) of \d+ images .* \(([\d.]+) images/s\)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--checkpoint_root", default="checkpoint")
    parser.add_argument("--results_root", default="results")
    parser.add_argument("--speed", default=None, help="benchmarks/variants_speed.py --json output: the cost column "
                        "becomes its median images/s ratio to SD img2img (alternating rounds on one job) instead of "
                        "the rate of this run's own expansions, which depends on what else shared the machine")
    return parser.parse_args(argv)


def _json(path: Path, dataset: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path} not found; run `{COMMAND.format(dataset=dataset)}` (it resumes).")
    return json.loads(path.read_text())


def images_per_second(log: Path) -> float | None:
    """expand.py's rate in the run that wrote the most images (a resumed rerun writes none)."""
    rates = [(int(m[1]), float(m[2])) for m in RATE.finditer(log.read_text())] if log.is_file() else []
    return max(rates)[1] if rates else None


def benchmark_exp(exp: str, chosen: dict) -> str:
    """The benchmarks/variants_speed.py name of a comparison expansion (v_select_direct is the chosen direct's)."""
    return f"v_select_{chosen['direct'][2:]}" if exp == "v_select_direct" else exp


def tables(dataset: str, checkpoint_root: Path, results_root: Path, speed: dict | None = None) -> str:
    """The val grid and the variants table, markdown; raises UserError naming what is missing."""
    out = results_root / dataset / "variants"
    chosen = _json(out / "chosen.json", dataset)
    gap = {Path(r["name"]).name: r for r in _json(out / "gap_test.json", dataset)["rows"]}
    report = _json(out / "report" / "report.json", dataset)
    lines = ["| setting (seed 1) | val acc. (best epoch) |", "|---|---|"]
    for exp in GRID:
        path = checkpoint_root / dataset / exp / RUN / "seed1" / "results.yaml"
        if path.is_file():
            lines.append(f"| {exp} | {read_results(path)['val_best_accuracy']:.2f} |")
    rows = (("plain SD img2img", "v_sd"), ("DistDiff (paper defaults)", "v_paper"),
            ("transform from the identity", chosen["identity"]), ("direct guidance", chosen["direct"]),
            ("selection alone (SD, best of 4)", chosen["select"]), ("direct + selection (best of 4)", "v_select_direct"))
    sd_rate = None if speed else images_per_second(out / "logs" / "v_sd.log")
    cost = "sampling cost (× SD images/s, benchmarks/variants_speed.py)" if speed else "images/s in this run (× SD)"
    header = ("variant", "setting", "seeds", "test acc. at best val", "test acc. best", "FID / KID (1e-3) vs test, guide",
              "FID / KID (1e-3) vs test, EfficientNet-Lite0", "fidelity: judge", "fidelity: guide", "copy→source",
              cost)
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    original = summarize_experiment(checkpoint_root / dataset / RUN)  # the guide's runs: what expanding must beat
    lines.append("| " + " | ".join(["original data", "–", ",".join(map(str, original["seeds"])),
                                     *(format_value(original["mean"][m], original["std"][m]) for m in ACCURACY),
                                     *["–"] * 6]) + " |")
    yard = gap.get("yardstick: real train vs test")
    if yard:  # the real train images against test: the distance a perfect expansion would have
        fid, kid = independent_distance(report, "real train (yardstick)")
        lines.append("| " + " | ".join(["yardstick: real train vs test", "–", "–", "–", "–",
                                         f"{yard['fid']:.4f} / {yard['kid_mean'] * 1e3:.2f}", f"{fid} / {kid}",
                                         f"{yard['fidelity_judge']:.3f}", f"{yard['fidelity_guide']:.3f}", "–", "–"]) + " |")
    summaries = {}
    for label, exp in rows:
        summary = summaries[exp] = summarize_experiment(checkpoint_root / dataset / exp / RUN)
        acc = [format_value(summary["mean"][m], summary["std"][m]) if m in summary["mean"] else ""
               for m in ACCURACY]
        if exp not in gap:
            raise UserError(f"{exp} is not in {out / 'gap_test.json'}; rerun `{COMMAND.format(dataset=dataset)}`.")
        g = gap[exp]
        fid, kid = independent_distance(report, exp)
        if speed:
            name = benchmark_exp(exp, chosen)
            if name not in speed:
                raise UserError(f"{name} is not in the --speed file; run "
                                "`python benchmarks/variants_speed.py --json FILE` (all variants, the default).")
            cell = f"{speed[name]['median_ratio']:.2f}×"
        else:
            rate = images_per_second(out / "logs" / f"{exp}.log")
            cell = f"{rate:.2f} ({rate / sd_rate:.2f}×)" if rate and sd_rate else ""
        lines.append("| " + " | ".join([label, exp, ",".join(map(str, summary["seeds"])), *acc,
                                         f"{g['fid']:.4f} / {g['kid_mean'] * 1e3:.2f}", f"{fid} / {kid}",
                                         f"{g['fidelity_judge']:.3f}", f"{g['fidelity_guide']:.3f}",
                                         f"{g['copy_to_source']:.3f}" if g["copy_to_source"] is not None else "",
                                         cell]) + " |")
    return "\n".join(lines + ["", target_table(rows, summaries, report)])


def target_table(rows: tuple, summaries: dict, report: dict) -> str:
    """Each variant against plain SD img2img by the target's rule: best-val-epoch accuracy and independent FID."""
    fid = {exp: row["fid"] if (row := independent_overall(report, exp)) else None for exp in summaries}
    lines = [f"| variant | setting | Δ acc. at best val vs SD, paired [95% CI] (n, MDE) | ≥ {MARGIN:g} point, "
             "interval above 0 | Δ FID vs SD, EfficientNet-Lite0 | meets the target |", "|---|---|---|---|---|---|"]
    for label, exp in rows[1:]:
        paired = paired_against(summaries[exp], summaries["v_sd"], ACCURACY[0])
        if paired is None:
            lines.append(f"| {label} | {exp} | fewer than 2 seeds shared with v_sd | | | |")
            continue
        clears = paired.mean >= MARGIN and paired.low > 0
        closer = None if fid[exp] is None or fid["v_sd"] is None else fid[exp] < fid["v_sd"]
        d_fid = "" if closer is None else f"{fid[exp] - fid['v_sd']:+.2f}"
        meets = "yes" if clears and closer else "no"
        lines.append(f"| {label} | {exp} | {paired.format()} | {'yes' if clears else 'no'} | {d_fid} | {meets} |")
    return "\n".join(lines)


def main(args):
    with cli.user_errors("variants_table.py"):
        speed = json.loads(Path(args.speed).read_text()) if args.speed else None
        text = tables(args.dataset, Path(args.checkpoint_root), Path(args.results_root), speed)
    print(text)
    return text


if __name__ == "__main__":
    main(parse_args())
