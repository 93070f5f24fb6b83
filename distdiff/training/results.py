"""Run results: writing results.yaml and summarising seeds (mean ± sample std) across experiments.

An experiment folder holds one `seed<N>/results.yaml` per seed: with the replicate protocol, seed N
is replicate N of the whole pipeline (guide, expansion and classifier all seeded N), so two
experiments are compared seed by seed (distdiff.training.comparison). The spread reported is the
sample standard deviation over seeds (ddof=1, Python's statistics.stdev); it is undefined for one seed.

Columns, in order: the test accuracy at the best-validation epoch, the mean test accuracy over the
last 10 epochs (no selection at all), then the paper's metric, the best test accuracy over epochs,
which is chosen on test and labelled so.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import statistics
from pathlib import Path
from typing import Any

import yaml

from distdiff.errors import UserError
from distdiff.training.comparison import PairedDifference, paired_difference
from distdiff.utils.files import atomic_open, atomic_write_text

RESULTS_NAME = "results.yaml"
METRICS = ("val_selected_accuracy", "last10_accuracy", "best_accuracy")
# Each metric's column heading in tables and plots.
METRIC_LABELS = {"val_selected_accuracy": "test @ best-val epoch", "last10_accuracy": "test, mean of last 10 epochs",
                 "best_accuracy": "best test (paper's metric, chosen on test)"}
SEED_DIR = re.compile(r"seed(\d+)")


def write_results(path: str | Path, results: dict[str, Any]) -> None:
    """Write a run's results as YAML, atomically."""
    plain = {k: (float(v) if hasattr(v, "dtype") else v) for k, v in results.items()}
    atomic_write_text(path, yaml.safe_dump(plain, sort_keys=False))


def read_results(path: str | Path) -> dict[str, Any]:
    """Read one results.yaml."""
    try:
        with open(path, encoding="utf-8") as handle:
            results = yaml.safe_load(handle)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UserError(f"{path} is not valid YAML{line}; delete it (the run then counts as unfinished) or "
                         f"rerun that seed with --overwrite.") from err
    if not isinstance(results, dict) or "best_accuracy" not in results:
        raise UserError(f"{path} is not a results.yaml written by train_original.py / train_expand.py.")
    return results


def best_on_validation(run_dirs: list[str | Path]) -> Path:
    """The run folder whose results.yaml has the highest val_best_accuracy (the first on a tie)."""
    scored = []
    for run in map(Path, run_dirs):
        if not (run / RESULTS_NAME).is_file():
            raise UserError(f"{run / RESULTS_NAME} not found; finish that run first (rerun its train_original.py "
                             f"command: it resumes).")
        results = read_results(run / RESULTS_NAME)
        if results.get("val_best_accuracy") is None:
            raise UserError(f"{run} was trained without --validation; a choice on the val split needs it.")
        scored.append((results["val_best_accuracy"], run))
    if not scored:
        raise UserError("no run folder given to choose from.")
    return max(scored, key=lambda pair: pair[0])[1]  # max keeps the first of equal scores


def higher_strength_on_validation(fidelity: dict[float, float], *, base: float, candidates: tuple[float, ...],
                                  min_drop: float) -> tuple[float, str]:
    """(strength, reason): the lowest of `candidates` whose label fidelity (on val) is at least `min_drop`
    below the fidelity at `base`; the highest candidate when none drops that much."""
    missing = [s for s in (base, *candidates) if s not in fidelity]
    if missing or not candidates:
        raise UserError(f"label fidelity is needed at the base strength and at least one candidate; missing {missing}.")
    for strength in sorted(candidates):
        if fidelity[base] - fidelity[strength] >= min_drop - 1e-9:  # 0.95 - 0.90 is 0.0499... in floats
            return strength, (f"fidelity {fidelity[strength]:.3f} at {strength:g} is {fidelity[base] - fidelity[strength]:.3f} "
                              f"below {fidelity[base]:.3f} at {base:g} (rule: a drop of at least {min_drop:g})")
    strongest = max(candidates)
    return strongest, (f"no candidate's fidelity is {min_drop:g} below {fidelity[base]:.3f} at {base:g} "
                       f"({', '.join(f'{s:g}: {fidelity[s]:.3f}' for s in sorted(candidates))}); the rule then takes "
                       f"the strongest, {strongest:g}")


def _seed_dirs(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := SEED_DIR.fullmatch(p.name))]
    return sorted(found)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); std is None for a single value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def per_replicate(summary: dict[str, Any], metric: str) -> dict[int, float]:
    """{seed: value} of `metric` in a summarize_experiment summary (empty where the metric is missing)."""
    return dict(zip(summary["seeds"], summary["per_seed"].get(metric, [])))


def paired_against(summary: dict[str, Any], baseline: dict[str, Any], metric: str) -> PairedDifference | None:
    """`summary` - `baseline` in `metric`, paired by seed; None where they share fewer than 2 finished seeds."""
    candidate, base = per_replicate(summary, metric), per_replicate(baseline, metric)
    if len(set(candidate) & set(base)) < 2:
        return None
    return paired_difference(candidate, base)


def summarize_experiment(folder: str | Path) -> dict[str, Any]:
    """Per-seed metrics, mean and sample std of an experiment folder (its seed<N>/results.yaml files).

    Seeds without results.yaml (unfinished runs) are listed under 'unfinished', not averaged.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder.")
    seeds = _seed_dirs(folder)
    if not seeds:
        raise UserError(f"{folder} has no seed<N>/ folders; pass an experiment folder such as "
                         f"checkpoint/digits/smallcnn_unpretrained_lr0.1 (or a folder of them with --multi).")
    runs = {seed: read_results(path / RESULTS_NAME) for seed, path in seeds if (path / RESULTS_NAME).is_file()}
    unfinished = [seed for seed, path in seeds if seed not in runs]
    summary: dict[str, Any] = {"experiment": str(folder), "seeds": sorted(runs), "unfinished": unfinished,
                               "per_seed": {}, "mean": {}, "std": {}}
    for metric in METRICS:
        values = [runs[seed][metric] for seed in sorted(runs) if runs[seed].get(metric) is not None]
        if runs and len(values) == len(runs):
            summary["per_seed"][metric] = values
            summary["mean"][metric], summary["std"][metric] = mean_std(values)
    return summary


def find_experiments(root: str | Path) -> list[Path]:
    """Every folder under `root` (itself included) holding seed<N>/ run folders, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder.")
    # A seed folder with only log.txt is an unfinished run: listed (as unfinished), never silently dropped.
    found = {p.parent for p in root.rglob("seed*") if p.is_dir() and SEED_DIR.fullmatch(p.name)
             and ((p / RESULTS_NAME).is_file() or (p / "log.txt").is_file())}
    return sorted(found)


def format_value(mean: float, std: float | None) -> str:
    """'83.09 ± 0.11' (std: sample std over seeds), or '83.09' for one seed."""
    return f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _columns(summaries: list[dict[str, Any]]) -> list[str]:
    return [m for m in METRICS if any(m in s["mean"] for s in summaries)]


def markdown_table(summaries: list[dict[str, Any]], *, root: str | Path | None = None,
                   baseline: dict[str, Any] | None = None) -> str:
    """One row per experiment: seeds, then mean ± sample std of each metric (percent); with `baseline`, each
    experiment's paired difference from it in the first metric both have (mean [95% CI], n, MDE) and verdict."""
    metrics = _columns(summaries)
    header = ["experiment", "seeds", *(METRIC_LABELS[m] for m in metrics)]
    paired_metric = next((m for m in metrics if baseline is not None and m in baseline["mean"]), None)
    if paired_metric:
        header += [f"Δ vs {_name(baseline, root)}, {METRIC_LABELS[paired_metric]} [95% CI] (n, MDE)", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [format_value(s["mean"][m], s["std"][m]) if m in s["mean"] else "" for m in metrics]
        seeds = ",".join(map(str, s["seeds"])) + (f" (unfinished: {','.join(map(str, s['unfinished']))})"
                                                  if s["unfinished"] else "")
        if paired_metric:
            paired = None if s is baseline else paired_against(s, baseline, paired_metric)
            cells += ["baseline", ""] if s is baseline else ([paired.format(), paired.verdict] if paired else
                                                              ["fewer than 2 common seeds", ""])
        lines.append(f"| {_name(s, root)} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def find_baseline(summaries: list[dict[str, Any]], name: str, *, root: str | Path) -> dict[str, Any]:
    """The summary of experiment `name` (its folder relative to `root`) among `summaries`."""
    wanted = os.path.normpath(name)
    for summary in summaries:
        if _name(summary, root) == wanted:
            return summary
    raise UserError(f"--baseline {name} is not an experiment folder under {root}; choose one of "
                    f"{[_name(s, root) for s in summaries]}.")


def _name(summary: dict[str, Any], root: str | Path | None) -> str:
    return os.path.relpath(summary["experiment"], root) if root is not None else summary["experiment"]


def write_csv(summaries: list[dict[str, Any]], path: str | Path, *, root: str | Path | None = None) -> None:
    """Atomic CSV: experiment, n_seeds, seeds, unfinished, then <metric>_mean, <metric>_std, <metric>_per_seed."""
    metrics = _columns(summaries)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["experiment", "n_seeds", "seeds", "unfinished"]
                    + [f"{m}_{part}" for m in metrics for part in ("mean", "std", "per_seed")])
    for s in summaries:
        row = [_name(s, root), len(s["seeds"]), " ".join(map(str, s["seeds"])), " ".join(map(str, s["unfinished"]))]
        for m in metrics:
            std = s["std"].get(m)
            row += ([s["mean"][m], "" if std is None else std, " ".join(f"{v:g}" for v in s["per_seed"][m])]
                    if m in s["mean"] else ["", "", ""])
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def format_experiment(summary: dict[str, Any]) -> str:
    """A few lines: per-seed values and mean ± sample std of each metric."""
    lines = [f"{summary['experiment']}: seeds {summary['seeds']}"]
    if summary["unfinished"]:
        lines.append(f"  unfinished seeds (no results.yaml yet): {summary['unfinished']}")
    for metric, values in summary["per_seed"].items():
        per_seed = ", ".join(f"seed{s} {v:.2f}" for s, v in zip(summary["seeds"], values))
        lines.append(f"  {METRIC_LABELS[metric]}: {format_value(summary['mean'][metric], summary['std'][metric])}  "
                     f"({per_seed})")
    lines.append("  (± is the sample standard deviation over seeds, ddof=1)")
    return "\n".join(lines)


def plot_summaries(summaries: list[dict[str, Any]], path: str | Path, *, root: str | Path | None = None
                   ) -> list[tuple[str, str, float, float]]:
    """Bar chart of the table (one group per experiment, one bar per metric) with the sample std as error bars.

    Returns what was drawn, read back from the figure: (experiment, metric, bar height, error bar half-length).
    """
    import matplotlib

    matplotlib.use("Agg")  # a file, never a display
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = _columns(summaries)
    if not metrics:
        raise UserError("no finished runs to plot (no results.yaml with accuracies).")
    names = [_name(s, root) for s in summaries]
    width = 0.8 / len(metrics)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(summaries) + 2), 4.5))
    positions = np.arange(len(summaries))
    drawn = []
    for k, metric in enumerate(metrics):
        means = [s["mean"].get(metric, np.nan) for s in summaries]
        stds = [s["std"].get(metric) or 0.0 for s in summaries]  # one seed: no spread to draw
        bars = axis.bar(positions + (k - (len(metrics) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                        label=METRIC_LABELS[metric])
        segments = bars.errorbar.lines[2][0].get_segments()
        drawn += [(name, metric, float(bar.get_height()), float(abs(seg[1][1] - seg[0][1]) / 2))
                  for name, bar, seg in zip(names, bars, segments)]
    finite = [s["mean"][m] for s in summaries for m in metrics if m in s["mean"]]
    low = min(finite) - max(s["std"].get(m) or 0.0 for s in summaries for m in metrics)
    axis.set_ylim(max(0.0, low - 2.0), min(100.0, max(finite) + 2.0))  # accuracies differ by points, not tens
    axis.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("test accuracy (%), mean ± sample std over seeds")
    axis.legend(fontsize=8)
    with atomic_open(path) as handle:
        figure.savefig(handle, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return drawn
