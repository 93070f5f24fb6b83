"""Experiments as data: a benchmark is a list of expansion methods, run as whole-pipeline replicates and compared.

A spec file (scripts/experiments/*.py) defines `BENCHMARK = Benchmark(...)` (distdiff.jobs.spec): the
dataset, the replicates, and the experiments, each a name, a label and its expand.py flags, or a `Grid` of named
settings of which the one with the best validation accuracy (replicate 1) is kept, or an
`Augmentation` (the original data with a train-time augmentation, no expansion). `run_benchmark`
runs the stages, each resumable (every command skips or resumes finished work) and spread over
one-thread lanes:

1. guides: replicate r trains the classifier on the original data with seed r (the original-data
   row of the table, and replicate r's guide), and each augmentation row with seed r;
2. expand and train: for every experiment (every grid setting at replicate 1) and replicate r,
   expand.py with guide r and --seed r into expanded/<dataset>/<name>/seed<r>/, then train_expand.py
   with seed r on it;
3. choose on val: each grid keeps the setting whose replicate-1 classifier has the best validation
   accuracy (never test), then runs it for the other replicates;
4. report (optional): one comparison report over replicate 1's expansions (distances to test in the
   guide's and an independent feature space);
5. judge (optional, datasets with a pool split): scripts/shift_gap.py over replicate 1's expansions,
   label fidelity under a pixel judge trained on the pool split and each copy's distance to its source;
6. table (distdiff.jobs.compare_table): test accuracy per experiment and its difference from the
   baseline and from the original data, paired by replicate (distdiff.training.comparison), written
   to results/<dataset>/<bench>/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from distdiff.data.registry import REPO_ROOT
from distdiff.errors import UserError
from distdiff.jobs.compare_table import table
from distdiff.jobs.spec import (CHOSEN, JUDGE, LR, ORIGINAL, REPORT, Augmentation, Benchmark, Experiment, Grid,
                                Layout, expansions, read_chosen)
from distdiff.training.results import RESULTS_NAME, read_results
from distdiff.utils.files import atomic_write_text

STAGES = ("guides", "expand", "choose", "report", "judge", "table")


@dataclass(frozen=True)
class Job:
    """One command of a stage: its log name and argv (run from the repository root)."""

    name: str
    argv: tuple[str, ...]


def guide_job(layout: Layout, replicate: int, augmentation: Augmentation | None = None) -> Job:
    """Replicate r's classifier on the original data: the original-data row and replicate r's guide (with an
    augmentation: that row's replicate r)."""
    bench = layout.bench
    name, augment = (ORIGINAL, ()) if augmentation is None else (augmentation.name, ("--augment",
                                                                                     augmentation.augment))
    return Job(f"{name}_seed{replicate}", (sys.executable, "train_original.py", bench.dataset, bench.arch, f"{LR:g}",
                                           "False", "0", "--seed", str(replicate), "--num_threads", "1",
                                           "--num_workers", "0", "--output_root", str(layout.root / "checkpoint"),
                                           *augment, *bench.train_flags))


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
             "--output_root", str(layout.root / "checkpoint"), *bench.train_flags, *experiment.train_flags)
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


def run_benchmark(bench: Benchmark, *, lanes: int = 2, stages: Sequence[str] = STAGES, root: Path = REPO_ROOT,
                  speed: dict | None = None) -> str:
    """Run the stages of `bench` (resumable) and return the table; files under results/<dataset>/<bench>/.
    `speed`: benchmarks/variants_speed.py's JSON, for the table's cost column."""
    layout = Layout(bench, root)
    logs = layout.results / "logs"
    fixed = [e for e in bench.experiments if isinstance(e, Experiment)]
    grids = [g for g in bench.experiments if isinstance(g, Grid)]
    augmentations = [a for a in bench.experiments if isinstance(a, Augmentation)]
    if "guides" in stages:
        run_jobs([[guide_job(layout, r, a)] for a in (None, *augmentations) for r in bench.replicates], logs=logs,
                 lanes=lanes, desc="guides and augmentation rows")
    if "expand" in stages:
        chains = [experiment_jobs(layout, e, r) for e in fixed for r in bench.replicates]
        chains += [experiment_jobs(layout, g.experiment(s), 1) for g in grids for s in g.settings]
        run_jobs(chains, logs=logs, lanes=lanes, desc="expand + train (grids: replicate 1)")
    if "choose" in stages and grids:
        chosen = {g.name: choose_on_val(layout, g) for g in grids}
        atomic_write_text(layout.results / CHOSEN, json.dumps(chosen, indent=1))
        chains = [experiment_jobs(layout, g.experiment(chosen[g.name]), r) for g in grids for r in bench.replicates
                  if r != 1]
        run_jobs(chains, logs=logs, lanes=lanes, desc="chosen settings: other replicates")
    chosen = read_chosen(layout)
    missing = [g.name for g in grids if g.name not in chosen]
    if missing and {"report", "judge"} & set(stages):
        raise UserError(f"grids {missing} have no choice yet ({layout.results / CHOSEN}); run the 'choose' stage "
                        f"first.")
    outs = [str(layout.expansion(e.name, 1)) for e in expansions(bench, chosen)]
    jobs = []
    if "report" in stages and bench.report:
        jobs.append([Job("report", (sys.executable, "scripts/report.py", *outs, "--output_dir",
                                    str(layout.results / REPORT)))])
    if "judge" in stages and bench.judge:
        jobs.append([Job("judge", (sys.executable, "scripts/shift_gap.py", bench.dataset, "--guide",
                                   str(layout.guide(1)), "--held_out", "test", "--expanded", *outs, "--json",
                                   str(layout.results / JUDGE)))])
    if jobs:
        run_jobs(jobs, logs=logs, lanes=lanes, desc="report and judge (replicate 1)")
    text = table(layout, chosen, speed=speed)
    if "table" in stages:
        atomic_write_text(layout.results / "table.md", text)
    return text
