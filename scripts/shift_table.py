"""A comparison table from what scripts/shift_comparison.sh or scripts/fashion_comparison.sh wrote.

    python scripts/shift_table.py digits-shift-blur                 # docs/shift_benchmark.md
    python scripts/shift_table.py fashion-mnist --layout fashion    # docs/fashion_mnist.md

One markdown row per setting: test accuracy over seeds (mean ± sample std: the best epoch, the
paper's metric, and the epoch val picked), the difference from plain SD img2img at the best-val epoch
paired by seed (distdiff.training.comparison), then for each expansion its distance to held-out
test images in the guide's features (FID, KID) and in ImageNet EfficientNet-Lite0's (the
report's independent space), label fidelity (pool-trained judge, guide) and
copy distance from results/DATASET/gap_test.json, and from
results/DATASET/comparison_report/report.json the final D_c and the transform step's eps
saturation and moves. A missing input
is an error naming the command that makes it.
"""

import argparse
import json
from pathlib import Path

from distdiff import cli
from distdiff.errors import UserError
from distdiff.method.records import Record
from distdiff.training.experiment import run_name
from distdiff.training.results import format_value, paired_against, summarize_experiment

ARCH, LR, COPIES = "smallcnn", 0.1, 5  # what scripts/shift_comparison.sh runs
RUN = run_name(ARCH, False, LR, "default")
# row label | expansion name (None: original data), in scripts/shift_comparison.sh's order
SETTINGS = (("SD img2img", f"sd_{COPIES}x"), ("DistDiff class only", f"distdiff_class_{COPIES}x"),
            ("DistDiff group only", f"distdiff_group_{COPIES}x"), ("DistDiff class + group", f"distdiff_{COPIES}x"),
            ("direct guidance", f"distdiff_direct_{COPIES}x"),
            ("random transform alone (rho 0)", f"distdiff_rho0_{COPIES}x"))
# row label | experiment folder under checkpoint/DATASET | expansion name
BASELINES = (("original data", RUN, None), ("AutoAugment", run_name(ARCH, False, LR, "autoaugment"), None))
ROWS = BASELINES + tuple((label, f"{name}/{RUN}", name) for label, name in SETTINGS)
STRENGTH_CHOICE = "strength_choice.json"  # scripts/choose_strength.py's record of the higher strength


def fashion_rows(results_dir: Path) -> tuple:
    """scripts/fashion_comparison.sh's rows: the paper's strength, then the higher one chosen on val."""
    high = _load_json(results_dir / STRENGTH_CHOICE, "fashion")["strength"]
    settings = (("SD img2img, strength 0.5", f"sd_{COPIES}x"),
                ("DistDiff class + group, 0.5", f"distdiff_{COPIES}x"),
                (f"SD img2img, strength {high:g}", f"sd_{COPIES}x_s{high:g}"),
                (f"DistDiff class + group, {high:g}", f"distdiff_{COPIES}x_s{high:g}"),
                ("direct guidance, 0.5", f"distdiff_direct_{COPIES}x"),
                ("random transform alone (rho 0), 0.5", f"distdiff_rho0_{COPIES}x"))
    return BASELINES + tuple((label, f"{name}/{RUN}", name) for label, name in settings)


# --layout: (rows of results/DATASET, the command that writes what the table reads)
LAYOUTS = {"shift": (lambda results_dir: ROWS, "bash scripts/shift_comparison.sh {dataset} STRENGTH"),
           "fashion": (fashion_rows, "bash scripts/fashion_comparison.sh")}
INDEPENDENT = "efficientnet_lite0"  # the report's feature space the guide never saw (distdiff/report/feature_spaces.py)
SD_FOLDER = f"sd_{COPIES}x/{RUN}"  # plain SD img2img at the paper's strength: what each row is paired against
HEADER = ("setting", "seeds", "test acc. best", "test acc. at best val",
          "Δ at best val vs SD img2img, paired [95% CI] (n, MDE)", "FID vs test, guide",
          "KID vs test (1e-3), guide", "FID vs test, EfficientNet-Lite0", "KID vs test (1e-3), EfficientNet-Lite0",
          "fidelity: judge", "fidelity: guide", "copy→source", "D_c final", "eps saturated", "move: draw / gradient")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a dataset that scripts/shift_comparison.sh or fashion_comparison.sh has run")
    parser.add_argument("--layout", default="shift", choices=sorted(LAYOUTS), help="which script's rows")
    parser.add_argument("--checkpoint_root", default="checkpoint", help="where the training runs are")
    parser.add_argument("--results_root", default="results", help="where the comparison's reports are")
    return parser.parse_args(argv)


def _load_json(path: Path, layout: str, dataset: str = "DATASET") -> dict:
    if not path.is_file():
        raise UserError(f"{path} not found; run `{LAYOUTS[layout][1].format(dataset=dataset)}` first "
                         f"(it resumes and writes it at the end).")
    return json.loads(path.read_text())


def _f(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def independent_overall(report: dict, name: str) -> dict | None:
    """Set `name`'s overall FID/KID against test in the independent space; None for a report without it."""
    section = report.get("distribution", {}).get(INDEPENDENT, {})
    rows = [r["overall"] for r in section.get("rows", []) if r["set"] == name and r["reference"] == "test"]
    return rows[0] if section.get("status") == "ok" and rows else None


def independent_distance(report: dict, name: str) -> list[str]:
    """FID and KID (1e-3) of set `name` against test in the independent space; blanks for a report without it."""
    row = independent_overall(report, name)
    if row is None:
        return ["", ""]
    return [f"{row['fid']:.2f}", f"{row['kid_mean'] * 1e3:.2f} ± {row['kid_std'] * 1e3:.2f}"]


def table(dataset: str, checkpoint_root: Path, results_root: Path, layout: str = "shift") -> str:
    """The markdown table; raises ValueError naming what is missing."""
    rows, command = LAYOUTS[layout][0](results_root / dataset), LAYOUTS[layout][1].format(dataset=dataset)
    gap = _load_json(results_root / dataset / "gap_test.json", layout, dataset)
    report = _load_json(results_root / dataset / "comparison_report" / "report.json", layout, dataset)
    gap_rows = {Path(r["name"]).name: r for r in gap["rows"]}
    yard = next(r for r in gap["rows"] if r["name"].startswith("yardstick"))
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    sd = summarize_experiment(checkpoint_root / dataset / SD_FOLDER)
    lines.append(f"| yardstick: real train (100) vs test | – | – | – | – | {yard['fid']:.4f} | "
                 f"{yard['kid_mean'] * 1e3:.2f} ± {yard['kid_std'] * 1e3:.2f} | "
                 f"{' | '.join(independent_distance(report, 'real train (yardstick)'))} | {yard['fidelity_judge']:.3f} | "
                 f"{yard['fidelity_guide']:.3f} | – | – | – | – |")
    for label, folder, expansion in rows:
        summary = summarize_experiment(checkpoint_root / dataset / folder)
        acc = [format_value(summary["mean"][m], summary["std"][m]) if m in summary["mean"] else ""
               for m in ("best_accuracy", "val_selected_accuracy")]
        paired = None if folder == SD_FOLDER else paired_against(summary, sd, "val_selected_accuracy")
        acc.append("–" if folder == SD_FOLDER else paired.format() if paired else "fewer than 2 shared seeds")
        seeds = ",".join(map(str, summary["seeds"]))
        cells = ["–"] * 10
        if expansion is not None:
            if expansion not in gap_rows:
                raise UserError(f"{expansion} is not in {results_root / dataset / 'gap_test.json'}; rerun "
                                 f"`{command}`.")
            g = gap_rows[expansion]
            energies = report["energies"].get(expansion, {})
            d_c = energies.get("D_c", {})
            step = energies.get("step", {})
            draw, grad = (step.get(k.value, {}).get("mean") for k in (Record.MOVE_DRAW, Record.MOVE_GRAD))
            cells = [f"{g['fid']:.4f}", f"{g['kid_mean'] * 1e3:.2f} ± {g['kid_std'] * 1e3:.2f}",
                     *independent_distance(report, expansion), f"{g['fidelity_judge']:.3f}", f"{g['fidelity_guide']:.3f}", _f(g["copy_to_source"]),
                     _f(d_c.get("final", {}).get("mean") if d_c.get("status") == "ok" else None),
                     _f(step.get(Record.EPS_SATURATED.value, {}).get("mean")),
                     f"{_f(draw) or '–'} / {grad:.3f}" if grad is not None else ""]
        lines.append("| " + " | ".join([label, seeds] + acc + cells) + " |")
    return "\n".join(lines)


def main(args):
    with cli.user_errors("shift_table.py"):
        text = table(args.dataset, Path(args.checkpoint_root), Path(args.results_root), args.layout)
    print(text)
    print("\n± is the sample standard deviation over seeds (ddof=1); distances in the guide's unit-norm features "
          "and in ImageNet EfficientNet-Lite0's pooled features, a space the guide never saw (read both against the "
          "yardstick row).")
    return text


if __name__ == "__main__":
    main(parse_args())
