"""A benchmark's table, generated from its spec: accuracies over replicates, each row paired with the baseline and
the original data (distdiff.training.comparison), and replicate 1's distances, label fidelity and cost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distdiff.errors import UserError
from distdiff.jobs.spec import JUDGE, ORIGINAL, REPORT, Augmentation, Grid, Layout
from distdiff.training.results import METRIC_LABELS, format_value, paired_against, summarize_experiment

# What the comparisons pair: test accuracy at the best-val epoch (the protocol's figure) and the mean of the last 10
# epochs (no selection; with 10 validation images per class the best-val epoch is the noisier of the two).
PAIRED_METRICS = ("val_selected_accuracy", "last10_accuracy")
METRICS = ("val_selected_accuracy", "last10_accuracy", "best_accuracy")
INDEPENDENT = "efficientnet_lite0"  # the report's feature space the guide never saw (distdiff/report/feature_spaces.py)
YARDSTICK = "real train (yardstick)"  # the report's row of the real train images against test
JUDGE_YARDSTICK = "yardstick: real train vs test"  # scripts/shift_gap.py's row of the real train images
SPEED_COMMAND = "python benchmarks/variants_speed.py --spec SPEC --json FILE"


@dataclass(frozen=True)
class Row:
    """A table row: the spec's name (a grid's name for its chosen setting), the experiment folder's, its label, its
    runs, and whether it has an expansion (the original data and augmentation rows have none)."""

    key: str
    experiment: str
    label: str
    runs: Path
    expanded: bool


def rows(layout: Layout, chosen: dict[str, str]) -> list[Row]:
    """The table's rows: the original data, then each experiment in spec order (a grid: its chosen setting)."""
    out = [Row(ORIGINAL, ORIGINAL, "original data", layout.guide_runs(), False)]
    for item in layout.bench.experiments:
        if isinstance(item, Augmentation):
            out.append(Row(item.name, item.name, item.label, layout.runs(None, augment=item.augment), False))
            continue
        if isinstance(item, Grid) and item.name not in chosen:
            continue  # not chosen yet: the table of a benchmark still running leaves it out, and says so
        experiment = item.experiment(chosen[item.name]) if isinstance(item, Grid) else item
        out.append(Row(item.name, experiment.name, experiment.label, layout.runs(experiment.name), True))
    return out


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def report_cells(report: dict, name: str) -> list[str]:
    """(FID to test in the independent space, the guide's label fidelity) of set `name` in report.json; blanks
    where the report lacks them (no report stage yet; the real images have no label fidelity)."""
    space = report.get("distribution", {}).get(INDEPENDENT, {})
    fid = [r["overall"]["fid"] for r in space.get("rows", []) if r["set"] == name and r["reference"] == "test"]
    fidelity = report.get("label_fidelity", {}).get("guide", {}).get(name, {}).get("overall", {}).get("share")
    return [f"{fid[0]:.2f}" if fid and space.get("status") == "ok" else "",
            f"{fidelity:.3f}" if fidelity is not None else ""]


def judge_cells(judge: dict, name: str) -> list[str]:
    """(the pool-trained judge's label fidelity, a copy's distance to its source) of row `name` in gap_test.json;
    blanks where the judge stage has not run or the row lacks them (real images have no source)."""
    found = [r for r in judge.get("rows", []) if r["name"] == name]
    if not found:
        return ["", ""]
    copy = found[0].get("copy_to_source")
    return [f"{found[0]['fidelity_judge']:.3f}", "" if copy is None else f"{copy:.3f}"]


def speed_cell(speed: dict, name: str) -> str:
    """The median images/s ratio of experiment `name` to the baseline's (benchmarks/variants_speed.py's JSON)."""
    if name not in speed:
        raise UserError(f"the speed file has no '{name}' (it has {sorted(speed)}): remake it for this spec with "
                        f"`{SPEED_COMMAND}`.")
    return f"{speed[name]['median_ratio']:.2f}"


def table(layout: Layout, chosen: dict[str, str], *, speed: dict | None = None) -> str:
    """The markdown table of `layout`'s benchmark from what its stages wrote; `speed`: the cost column's source."""
    bench = layout.bench
    table_rows = rows(layout, chosen)
    # a row of a benchmark still running may have no run yet: it shows no replicates rather than stopping the table
    summaries = {row.key: summarize_experiment(row.runs) if row.runs.is_dir() else
                 {"seeds": [], "unfinished": [], "per_seed": {}, "mean": {}, "std": {}} for row in table_rows}
    labels = {row.key: row.label for row in table_rows}
    pairs = [(other, metric) for other in dict.fromkeys((bench.baseline, ORIGINAL)) for metric in PAIRED_METRICS]
    report = _read_json(layout.results / REPORT / "report.json")
    judge = _read_json(layout.results / JUDGE)
    header = ["row", "experiment", "replicates", *(METRIC_LABELS[m] for m in METRICS),
              *(f"Δ vs {labels[other]}, {METRIC_LABELS[metric]} [95% CI] (n, MDE)" for other, metric in pairs),
              f"FID to test, {INDEPENDENT} (replicate 1)", "label fidelity, guide (replicate 1)"]
    if bench.judge:
        header += ["label fidelity, pool-trained judge (replicate 1)", "copy→source distance (replicate 1)"]
    if speed is not None:
        header.append(f"images/s × {labels[bench.baseline]} (median of rounds)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table_rows:
        summary = summaries[row.key]
        cells = [format_value(summary["mean"][m], summary["std"][m]) if m in summary["mean"] else "" for m in METRICS]
        for other, metric in pairs:
            difference = None if row.key == other else paired_against(summary, summaries[other], metric)
            cells.append("–" if row.key == other else difference.format() if difference else "too few replicates")
        expansion = str(layout.expansion(row.experiment, 1))
        if row.key == ORIGINAL:  # the real train images: the yardstick each expansion's distance is read against
            cells += report_cells(report, YARDSTICK) + (judge_cells(judge, JUDGE_YARDSTICK) if bench.judge else [])
        elif row.expanded:
            cells += report_cells(report, f"{row.experiment}/seed1") + (judge_cells(judge, expansion)
                                                                      if bench.judge else [])
        else:
            cells += ["–", "–"] + (["–", "–"] if bench.judge else [])
        if speed is not None:
            cells.append(speed_cell(speed, row.experiment) if row.expanded else "–")
        lines.append("| " + " | ".join([row.label, row.experiment, ",".join(map(str, summary["seeds"])), *cells])
                     + " |")
    choices = [f"{g.label}: {chosen[g.name]} (best replicate-1 validation accuracy among {', '.join(g.settings)})"
               if g.name in chosen else f"{g.label}: not chosen yet (the choose stage has not run)"
               for g in bench.experiments if isinstance(g, Grid)]
    notes = [f"{bench.dataset}, {bench.arch}, {bench.copies}x, replicates {','.join(map(str, bench.replicates))}: "
             f"replicate r is guide, expansion and classifier with seed r (docs/PROTOCOL.md). Δ: mean difference in "
             f"test accuracy (at the best-val epoch, or the mean of the last 10 epochs), paired by replicate, with its "
             f"95% interval and the smallest difference the replicates could detect (MDE, 80% power); a row beats "
             f"another only where the interval excludes 0. The original data's distance and fidelity cells are the "
             f"real train images' (the yardstick).", *(f"Chosen on val: {c}." for c in choices)]
    return "\n".join(lines + [""] + notes) + "\n"
