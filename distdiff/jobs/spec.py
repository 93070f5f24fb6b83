"""A benchmark spec and where its files go: the experiments (expansion methods, grids chosen on val,
augmentation rows), the dataset, the replicates (distdiff.jobs.compare runs it; docs/PROTOCOL.md).

Names are written once, in the spec file (scripts/experiments/*.py); folders, logs and rows are
derived from them by `Layout`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from distdiff.data.augment import AUGMENTS
from distdiff.data.datasets import dataset_slug
from distdiff.data.registry import REPO_ROOT
from distdiff.errors import UserError
from distdiff.models.classifiers import CHECKPOINT_NAME
from distdiff.training.experiment import run_path


NAME = re.compile(r"[A-Za-z0-9_]+")
ORIGINAL = "original"  # the table's name of the original-data row (the guides)
LR = 0.1  # the paper's lr, from scratch (docs/METHOD.md#defaults)


CHOSEN = "chosen.json"  # the grids' choices, under results/<dataset>/<bench>/
REPORT = "report"  # the comparison report's folder there
JUDGE = "gap_test.json"  # scripts/shift_gap.py's numbers there


class SpecError(UserError):
    """A benchmark spec that cannot run: the message names the spec file and the field."""


@dataclass(frozen=True)
class Experiment:
    """One expansion method: `name` (its folders), `label` (its row), its expand.py flags and its own
    train_expand.py flags (DA-Fusion's --synthetic_probability)."""

    name: str
    label: str
    flags: tuple[str, ...] = ()
    train_flags: tuple[str, ...] = ()


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
class Augmentation:
    """The original data with a train-time augmentation (train_original.py --augment): a row without expansion."""

    name: str
    label: str
    augment: str  # a name of distdiff.data.augment.AUGMENTS

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise SpecError(f"augmentation row {self.name}: augment '{self.augment}' is none of {sorted(AUGMENTS)}.")


@dataclass(frozen=True)
class Benchmark:
    """A dataset, its replicates, the experiments and the row the others are paired with."""

    name: str
    dataset: str
    experiments: tuple[Experiment | Grid | Augmentation, ...]
    baseline: str  # an experiment's name (or ORIGINAL)
    replicates: tuple[int, ...] = (1, 2, 3, 4, 5)
    arch: str = "smallcnn"
    copies: int = 5  # the paper's 5x
    expand_flags: tuple[str, ...] = ("--batch_size", "20")  # every experiment's (CPU: batching is faster)
    train_flags: tuple[str, ...] = ()
    report: bool = True
    judge: bool = False  # the judge stage: needs the dataset's pool split (shifted digits, Fashion-MNIST)

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

    def runs(self, name: str | None, *, augment: str = "default") -> Path:
        """The folder of an experiment's seed<r>/ runs (None: the original data's, with `augment`), as the training
        scripts write."""
        return run_path(output_root=self.root / "checkpoint", dataset=self.bench.dataset, arch=self.bench.arch,
                        pretrained=False, lr=LR, seed=1, augment=augment, exp=name).parent

    def guide_runs(self) -> Path:
        return self.runs(None)

    def guide(self, replicate: int) -> Path:
        return self.guide_runs() / f"seed{replicate}" / CHECKPOINT_NAME

    def expansion(self, name: str, replicate: int) -> Path:
        return self.root / "expanded" / self.slug / name / f"seed{replicate}"


def expansions(bench: Benchmark, chosen: dict[str, str]) -> list[Experiment]:
    """The experiments that make an expansion, in spec order (a grid: its chosen setting; unchosen grids left out)."""
    out = []
    for item in bench.experiments:
        if isinstance(item, Grid) and item.name in chosen:
            out.append(item.experiment(chosen[item.name]))
        elif isinstance(item, Experiment):
            out.append(item)
    return out


def read_chosen(layout: Layout) -> dict[str, str]:
    """The grids' choices so far ({} before the choose stage)."""
    path = layout.results / CHOSEN
    return json.loads(path.read_text()) if path.is_file() else {}


