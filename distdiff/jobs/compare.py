"""Experiments as data: a benchmark is a list of expansion methods, run as whole-pipeline replicates and compared.

A spec file (scripts/experiments/*.py) defines `BENCHMARK = Benchmark(...)`: the dataset, the
replicates, and the experiments, each a name, a label and its expand.py flags, or a `Grid` of named
settings of which the one with the best validation accuracy (replicate 1) is kept. `run_benchmark`
runs the stages, each resumable (every command skips or resumes finished work) and spread over
one-thread lanes:

1. guides: replicate r trains the classifier on the original data with seed r (the original-data
   row of the table, and replicate r's guide);
2. expand and train: for every experiment (every grid setting at replicate 1) and replicate r,
   expand.py with guide r and --seed r into expanded/<dataset>/<name>/seed<r>/, then train_expand.py
   with seed r on it;
3. choose on val: each grid keeps the setting whose replicate-1 classifier has the best validation
   accuracy (never test), then runs it for the other replicates;
4. report (optional): one comparison report over replicate 1's expansions (distances to test in the
   guide's and an independent feature space);
5. table: test accuracy per experiment and its difference from the baseline and from the original
   data, paired by replicate (distdiff.training.comparison), written to results/<dataset>/<bench>/.

Names are written once, in the spec; folders, logs and rows are derived from them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from distdiff.data.datasets import dataset_slug
from distdiff.data.registry import REPO_ROOT
from distdiff.errors import UserError
from distdiff.models.classifiers import CHECKPOINT_NAME
from distdiff.training.experiment import run_path
from distdiff.training.results import (METRIC_LABELS, RESULTS_NAME, format_value, paired_against, read_results,
                                       summarize_experiment)
from distdiff.utils.files import atomic_write_text


NAME = re.compile(r"[A-Za-z0-9_]+")
ORIGINAL = "original"  # the table's name of the original-data row (the guides)
LR = 0.1  # the paper's lr, from scratch (docs/METHOD.md#defaults)
# What the comparisons pair: test accuracy at the best-val epoch (the protocol's figure) and the mean of the last 10
# epochs (no selection; with 10 validation images per class the best-val epoch is the noisier of the two).
PAIRED_METRICS = ("val_selected_accuracy", "last10_accuracy")


class SpecError(UserError):
    """A benchmark spec that cannot run: the message names the spec file and the field."""


@dataclass(frozen=True)
class Experiment:
    """One expansion method: `name` (its folders), `label` (its row) and its expand.py flags."""

    name: str
    label: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grid:
    """Settings of one method; the one with the best replicate-1 validation accuracy is the row."""

    name: str
    label: str
    settings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # setting name -> expand.py flags

    def experiment(self, setting: str) -> Experiment:
        """The experiment of one setting, named <grid>_<setting>."""
        return Experiment(f"{self.name}_{setting}", f"{self.label} ({setting})", tuple(self.settings[setting]))


@dataclass(frozen=True)
class Benchmark:
    """A dataset, its replicates, the experiments and the row the others are paired with."""

    name: str
    dataset: str
    experiments: tuple[Experiment | Grid, ...]
    baseline: str  # an experiment's name (or ORIGINAL)
    replicates: tuple[int, ...] = (1, 2, 3, 4, 5)
    arch: str = "smallcnn"
    copies: int = 5  # the paper's 5x
    expand_flags: tuple[str, ...] = ("--batch_size", "20")  # every experiment's (CPU: batching is faster)
    train_flags: tuple[str, ...] = ()
    report: bool = True

    def __post_init__(self):
        names = [e.name for e in self.experiments]
        for name in [self.name, *names, *(f"{g.name}_{s}" for g in self.experiments if isinstance(g, Grid)
                                             for s in g.settings)]:
            if not NAME.fullmatch(name):
                raise SpecError(f"benchmark {self.name}: '{name}' is not a folder name (letters, digits, _).")
        if len(set(names)) != len(names) or ORIGINAL in names:
            raise SpecError(f"benchmark {self.name}: experiment names must be unique and not '{ORIGINAL}': {names}.")
        if self.baseline not in (*names, ORIGINAL):
            raise SpecError(f"benchmark {self.name}: baseline '{self.baseline}' is none of {names}.")
        if len(self.replicates) < 2 or 1 not in self.replicates:
            raise SpecError(f"benchmark {self.name}: a comparison needs at least 2 replicates including 1 (the grids "
                            f"choose on replicate 1), got {self.replicates}.")
        for grid in self.experiments:
            if isinstance(grid, Grid) and not grid.settings:
                raise SpecError(f"benchmark {self.name}: grid '{grid.name}' has no settings.")


def load_benchmark(path: str | Path) -> Benchmark:
    """The BENCHMARK of a spec file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path} not found; pass a spec file such as scripts/experiments/digits_shift_blur.py.")
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # a spec may import the shared rows beside it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.resolve().parent))
    if not isinstance(getattr(module, "BENCHMARK", None), Benchmark):
        raise SpecError(f"{path} defines no BENCHMARK = Benchmark(...).")
    return module.BENCHMARK


@dataclass(frozen=True)
class Layout:
    """Where a benchmark's files go, from the repository root (or `root`)."""

    bench: Benchmark
    root: Path = REPO_ROOT

    @property
    def slug(self) -> str:
        return dataset_slug(self.bench.dataset)

    @property
    def results(self) -> Path:
        return self.root / "results" / self.slug / self.bench.name

    def runs(self, name: str | None) -> Path:
        """The folder of an experiment's seed<r>/ runs (None: the original data's), as the training scripts write."""
        return run_path(output_root=self.root / "checkpoint", dataset=self.bench.dataset, arch=self.bench.arch,
                        pretrained=False, lr=LR, seed=1, exp=name).parent

    def guide_runs(self) -> Path:
        return self.runs(None)

    def guide(self, replicate: int) -> Path:
        return self.guide_runs() / f"seed{replicate}" / CHECKPOINT_NAME

    def expansion(self, name: str, replicate: int) -> Path:
        return self.root / "expanded" / self.slug / name / f"seed{replicate}"


@dataclass(frozen=True)
class Job:
    """One command of a stage: its log name and argv (run from the repository root)."""

    name: str
    argv: tuple[str, ...]


def guide_job(layout: Layout, replicate: int) -> Job:
    """Replicate r's classifier on the original data: the original-data row and replicate r's guide."""
    bench = layout.bench
    return Job(f"{ORIGINAL}_seed{replicate}", (sys.executable, "train_original.py", bench.dataset, bench.arch,
                                               f"{LR:g}", "False", "0", "--seed", str(replicate), "--num_threads",
                                               "1", "--num_workers", "0", "--output_root",
                                               str(layout.root / "checkpoint"), *bench.train_flags))


def experiment_jobs(layout: Layout, experiment: Experiment, replicate: int) -> list[Job]:
    """Expand with guide r and seed r, then train with seed r on that expansion."""
    bench = layout.bench
    out = layout.expansion(experiment.name, replicate)
    expand = (sys.executable, "expand.py", "-d", bench.dataset, "-a", bench.arch, "--guide_checkpoint",
              str(layout.guide(replicate)), "--seed", str(replicate), "--num_images_per_prompt", str(bench.copies),
              "--output_dir", str(out), "--cache_dir", str(layout.root / "data" / "latent_cache"), "--num_threads", "1",
              "--no_report", *bench.expand_flags, *experiment.flags)
    train = (sys.executable, "train_expand.py", bench.dataset, bench.arch, f"{LR:g}", experiment.name, "False", "0",
             "--seed", str(replicate), "--expanded_dir", str(out), "--num_threads", "1", "--num_workers", "0",
             "--output_root", str(layout.root / "checkpoint"), *bench.train_flags)
    tag = f"{experiment.name}_seed{replicate}"
    return [Job(f"{tag}_expand", expand), Job(f"{tag}_train", train)]


def run_jobs(chains: Sequence[Sequence[Job]], *, logs: Path, lanes: int, desc: str) -> None:
    """Run each chain's jobs in order, chains spread over `lanes` one-thread processes; a failure names its log."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    failed: list[str] = []

    def run_chain(chain: Sequence[Job]) -> None:
        for job in chain:
            log = logs / f"{job.name}.log"
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"$ {' '.join(job.argv)}\n")
                handle.flush()
                done = subprocess.run(job.argv, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
            if done.returncode:
                failed.append(f"{job.name} (exit {done.returncode}; see {log})")
                return

    with ThreadPoolExecutor(max_workers=lanes) as pool, tqdm(total=len(chains), desc=desc, unit="chain") as bar:
        for future in [pool.submit(run_chain, chain) for chain in chains]:
            future.result()
            bar.update()
    if failed:
        raise UserError(f"{len(failed)} job(s) failed: {'; '.join(failed)}. Fix the cause and rerun: finished "
                        f"work is kept.")


def choose_on_val(layout: Layout, grid: Grid) -> str:
    """The grid setting whose replicate-1 classifier has the highest best-validation accuracy (first on a tie)."""
    scores = []
    for setting in grid.settings:
        path = layout.runs(grid.experiment(setting).name) / "seed1" / RESULTS_NAME
        results = read_results(path)
        if results.get("val_best_accuracy") is None:
            raise UserError(f"{path} has no validation accuracy: {layout.bench.dataset} needs a val split (or "
                            f"--validation in train_flags) for a grid to choose on.")
        scores.append((results["val_best_accuracy"], setting))
    return max(scores, key=lambda pair: pair[0])[1]  # max keeps the first of equal scores


INDEPENDENT = "efficientnet_lite0"  # the report's feature space the guide never saw (distdiff/report/feature_spaces.py)
YARDSTICK = "real train (yardstick)"  # the report's row of the real train images against test


def _read_report(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _report_cells(report: dict, name: str) -> list[str]:
    """(FID to test in the independent space, the guide's label fidelity) of set `name` in report.json; blanks
    where the report lacks them (no report stage yet; the real images have no label fidelity)."""
    space = report.get("distribution", {}).get(INDEPENDENT, {})
    fid = [r["overall"]["fid"] for r in space.get("rows", []) if r["set"] == name and r["reference"] == "test"]
    fidelity = report.get("label_fidelity", {}).get("guide", {}).get(name, {}).get("overall", {}).get("share")
    return [f"{fid[0]:.2f}" if fid and space.get("status") == "ok" else "",
            f"{fidelity:.3f}" if fidelity is not None else ""]


@dataclass(frozen=True)
class Row:
    """A table row: the spec's name (a grid's name for its chosen setting), the experiment folder's, its label."""

    key: str
    experiment: str
    label: str
    runs: Path


def rows(layout: Layout, chosen: dict[str, str]) -> list[Row]:
    """The table's rows: the original data, then each experiment in spec order (a grid: its chosen setting)."""
    out = [Row(ORIGINAL, ORIGINAL, "original data", layout.guide_runs())]
    for item in layout.bench.experiments:
        if isinstance(item, Grid) and item.name not in chosen:
            continue  # not chosen yet: the table of a benchmark still running leaves it out, and says so
        experiment = item.experiment(chosen[item.name]) if isinstance(item, Grid) else item
        out.append(Row(item.name, experiment.name, experiment.label, layout.runs(experiment.name)))
    return out


def table(layout: Layout, chosen: dict[str, str]) -> str:
    """The markdown table: accuracies over replicates and each row paired with the baseline and the original."""
    bench = layout.bench
    table_rows = rows(layout, chosen)
    # a row of a benchmark still running may have no run yet: it shows no replicates rather than stopping the table
    summaries = {row.key: summarize_experiment(row.runs) if row.runs.is_dir() else
                 {"seeds": [], "unfinished": [], "per_seed": {}, "mean": {}, "std": {}} for row in table_rows}
    labels = {row.key: row.label for row in table_rows}
    metrics = ("val_selected_accuracy", "last10_accuracy", "best_accuracy")
    pairs = [(other, metric) for other in (bench.baseline, ORIGINAL) for metric in PAIRED_METRICS]
    report = _read_report(layout.results / "report" / "report.json")
    header = ["row", "experiment", "replicates", *(METRIC_LABELS[m] for m in metrics),
              *(f"Δ vs {labels[other]}, {METRIC_LABELS[metric]} [95% CI] (n, MDE)" for other, metric in pairs),
              f"FID to test, {INDEPENDENT} (replicate 1)", "label fidelity, guide (replicate 1)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table_rows:
        summary = summaries[row.key]
        cells = [format_value(summary["mean"][m], summary["std"][m]) if m in summary["mean"] else "" for m in metrics]
        for other, metric in pairs:
            difference = None if row.key == other else paired_against(summary, summaries[other], metric)
            cells.append("–" if row.key == other else difference.format() if difference else "too few replicates")
        cells += _report_cells(report, YARDSTICK if row.key == ORIGINAL else f"{row.experiment}/seed1")
        lines.append("| " + " | ".join([row.label, row.experiment, ",".join(map(str, summary["seeds"])), *cells])
                     + " |")
    choices = [f"{g.label}: {chosen[g.name]} (best replicate-1 validation accuracy among {', '.join(g.settings)})"
               if g.name in chosen else f"{g.label}: not chosen yet (the choose stage has not run)"
               for g in bench.experiments if isinstance(g, Grid)]
    notes = [f"{bench.dataset}, {bench.arch}, {bench.copies}x, replicates {','.join(map(str, bench.replicates))}: "
             f"replicate r is guide, expansion and classifier with seed r (docs/PROTOCOL.md). Δ: mean difference in "
             f"test accuracy (at the best-val epoch, or the mean of the last 10 epochs), paired by replicate, with its "
             f"95% interval and the smallest difference the replicates could detect (MDE, 80% power); a row beats "
             f"another only where the interval excludes 0.", *(f"Chosen on val: {c}." for c in choices)]
    return "\n".join(lines + [""] + notes) + "\n"


def run_benchmark(bench: Benchmark, *, lanes: int = 2, stages: Sequence[str] = ("guides", "expand", "choose",
                  "report", "table"), root: Path = REPO_ROOT) -> str:
    """Run the stages of `bench` (resumable) and return the table; files under results/<dataset>/<bench>/."""
    layout = Layout(bench, root)
    logs = layout.results / "logs"
    fixed = [e for e in bench.experiments if isinstance(e, Experiment)]
    grids = [g for g in bench.experiments if isinstance(g, Grid)]
    if "guides" in stages:
        run_jobs([[guide_job(layout, r)] for r in bench.replicates], logs=logs, lanes=lanes, desc="guides")
    if "expand" in stages:
        chains = [experiment_jobs(layout, e, r) for e in fixed for r in bench.replicates]
        chains += [experiment_jobs(layout, g.experiment(s), 1) for g in grids for s in g.settings]
        run_jobs(chains, logs=logs, lanes=lanes, desc="expand + train (grids: replicate 1)")
    chosen_path = layout.results / "chosen.json"
    if "choose" in stages and grids:
        chosen = {g.name: choose_on_val(layout, g) for g in grids}
        atomic_write_text(chosen_path, json.dumps(chosen, indent=1))
        chains = [experiment_jobs(layout, g.experiment(chosen[g.name]), r) for g in grids for r in bench.replicates
                  if r != 1]
        run_jobs(chains, logs=logs, lanes=lanes, desc="chosen settings: other replicates")
    chosen = json.loads(chosen_path.read_text()) if chosen_path.is_file() else {}
    missing = [g.name for g in grids if g.name not in chosen]
    if missing and "report" in stages:
        raise UserError(f"grids {missing} have no choice yet ({chosen_path}); run the 'choose' stage first.")
    if "report" in stages and bench.report:
        outs = [str(layout.expansion(row.experiment, 1)) for row in rows(layout, chosen)[1:]]
        run_jobs([[Job("report", (sys.executable, "scripts/report.py", *outs, "--output_dir",
                                  str(layout.results / "report")))]], logs=logs, lanes=1, desc="report")
    text = table(layout, chosen)
    if "table" in stages:
        atomic_write_text(layout.results / "table.md", text)
    return text
