"""The expansion report: measure one or several expansion folders against the same real images.

`build_report([OUT, ...], output_dir=DIR)` writes DIR/report.json (every number) and
DIR/report.html (its numbers from that JSON, its PNG figures embedded). Sections:
distribution distance (FID/KID, overall and per class, against the real train images that were
expanded and against held-out real images, with the yardstick real train vs real held-out),
label fidelity, copying, energies from manifest.jsonl, contact sheets. Distances are measured in the
guide's features and in independent feature spaces (distdiff/report/feature_spaces.py) that the guidance
never saw, each section titled with its space. A section whose inputs an
old run lacks (no manifest fields, no guide) is marked missing with the reason.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from distdiff.report import glance
from distdiff.report import figures
from distdiff.report import html as report_html
from distdiff.data.augment import eval_transform
from distdiff.models.classifiers import load_classifier
from distdiff.data.datasets import LabeledImages, load_expanded, source_of_synthetic
from distdiff.runs.expansion import RUN_CONFIG
from distdiff.runs.manifest import MANIFEST, read_manifest
from distdiff.utils.files import atomic_write_text
from distdiff.data.registry import load_dataset
from distdiff.report.feature_spaces import FEATURE_SPACES, chosen_spaces, space_features
from distdiff.report.metrics import (ReportError, copy_distances, energy_summary, fid_kid_by_class, guide_outputs,
                                     label_fidelity)

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
FORMAT_VERSION = 1
HELDOUT_SPLIT = "test"  # held-out real images: every dataset has a test split, not every one a val split
SHEET_SOURCES = 4  # sources per class on a contact sheet
SHEET_SEED = 0
BATCH_SIZE = 64
# How the report labels the guide's space: where the energy is minimised, so not an independent measurement.
GUIDE_SPACE_TITLE = "the guide's own (the space the guidance minimises its energy in; not independent)"
# The expand_config.json fields shown for each run.
CONFIG_FIELDS = ("guidance", "optimize_targets", "gs", "ls", "strength", "rho", "constraint_value", "K", "seed")


@dataclass
class Run:
    """One expansion folder: its synthetic images, their sources in the train split, its manifest."""

    name: str
    path: Path
    config: dict
    images: LabeledImages
    sources: torch.Tensor  # [M] index into the train split, -1 when a file name names no train image
    records: list[dict] = field(default_factory=list)


def _read_config(out: Path) -> dict:
    path = out / RUN_CONFIG
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err}); restore it or pass --dataset.") from err


def load_run(out: Path, train: LabeledImages, name: str) -> Run:
    """The synthetic images of `out` (OUT/<class>/<stem>_expand_<i>.png) matched to their train sources."""
    images = load_expanded(out, train.classes)
    by_stem = {(s.label, s.stem): i for i, s in enumerate(train.samples)}
    sources = []
    for sample in images.samples:
        source = source_of_synthetic(Path(sample.source).stem)
        sources.append(by_stem.get((sample.label, source[0]), -1) if source else -1)
    kept = {str(Path(s.source).relative_to(out)) for s in images.samples}
    records = [r for image, r in read_manifest(out / MANIFEST).items() if image in kept]
    return Run(name, out, _read_config(out), images, torch.tensor(sources, dtype=torch.long), records)


def run_names(outs: Sequence[Path], reserved: Sequence[str] = ()) -> list[str]:
    """Short, unique names: the folder names, or their last two parts when folder names repeat.

    `reserved` names (the real splits' rows) get their parent folder prepended so no row is ambiguous.
    """
    names = [p.name for p in outs]
    if len(set(names)) < len(names) or set(names) & set(reserved):
        names = [f"{p.parent.name}/{p.name}" for p in outs]
    if len(set(names)) < len(names) or set(names) & set(reserved):
        names = [str(p) for p in outs]
    return names


def _dataset_of(outs: Sequence[Path], dataset: str | None) -> str:
    found = {str(out): _read_config(out).get("dataset") for out in outs}
    if dataset is None:
        named = {d for d in found.values() if d}
        if not named:
            raise ReportError(f"no {RUN_CONFIG} names the dataset of {list(found)}; pass --dataset.")
        if len(named) > 1:
            raise ReportError(f"the expansions come from different datasets ({found}); a comparison measures them "
                              f"against the same real images, so compare expansions of one dataset.")
        dataset = named.pop()
    return dataset


def _guide_of(outs: Sequence[Path], guide_checkpoint: str | None) -> str | None:
    if guide_checkpoint is not None:
        return guide_checkpoint
    guides = [_read_config(out).get("guide_checkpoint") for out in outs]
    found = [g for g in guides if g and Path(g).is_file()]
    if len(set(found)) > 1:
        logger.warning("the expansions used different guides; measuring all in the features of %s", found[0])
    return found[0] if found else None


def _section_missing(reason: str) -> dict:
    return {"status": "missing", "reason": reason}


def _distribution(features: dict, labels: dict, runs: list[Run], classes: list[str], heldout: str) -> dict:
    """FID/KID rows (set, reference) for one feature space; the yardstick row comes first."""
    rows = [{"set": "real train (yardstick)", "reference": heldout,
             **fid_kid_by_class(features[heldout], labels[heldout], features["train"], labels["train"], classes)}]
    for run in runs:
        for reference in ("train", heldout):
            rows.append({"set": run.name, "reference": reference,
                         **fid_kid_by_class(features[reference], labels[reference], features[run.name],
                                            labels[run.name], classes)})
    return {"status": "ok", "rows": rows}


def _classifier_of(path: str, classes: list[str], flag: str, device):
    """(model, its eval transform) of a checkpoint trained on `classes`."""
    model, info = load_classifier(path, device)
    if list(info["classes"]) != list(classes):
        raise ReportError(f"{flag} {path} was trained on other classes ({info['classes'][:5]}...) than the "
                          f"expanded dataset's ({classes[:5]}...); pass a checkpoint of this dataset.")
    return model, eval_transform(info["image_size"], info["mean"], info["std"])


def _guide_sections(guide_path: str, judge_path: str | None, sets: dict, runs: list[Run], classes: list[str],
                    heldout: str, *, batch_size: int, device) -> dict:
    model, transform = _classifier_of(guide_path, classes, "--guide_checkpoint", device)
    features, predicted = {}, {}
    for name, images in sets.items():
        features[name], predicted[name] = guide_outputs(model, images.with_transform(transform),
                                                        batch_size=batch_size, device=device)
    labels = {name: torch.tensor(images.labels) for name, images in sets.items()}
    fidelity = {"guide": {name: label_fidelity(predicted[name], labels[name], classes)
                          for name in [run.name for run in runs] + [heldout]}}
    if judge_path:
        judge, judge_transform = _classifier_of(judge_path, classes, "--judge_checkpoint", device)
        fidelity["judge"] = {}
        for name in [run.name for run in runs] + [heldout]:
            _, judged = guide_outputs(judge, sets[name].with_transform(judge_transform), batch_size=batch_size,
                                      device=device)
            fidelity["judge"][name] = label_fidelity(judged, labels[name], classes)
        fidelity["judge_checkpoint"] = str(judge_path)
    copying = {run.name: copy_distances(features[run.name][run.sources >= 0], run.sources[run.sources >= 0],
                                        features["train"]) for run in runs}
    same_class = [torch.pdist(features["train"][labels["train"] == c]) for c in range(len(classes))]
    copying["real train, same class (yardstick)"] = {"among_copies": float(torch.cat(same_class).mean())}
    return {"distribution": _distribution(features, labels, runs, classes, heldout), "label_fidelity": fidelity,
            "copying": copying}


def _space_section(name: str, weights: str | None, sets: dict, runs: list[Run], classes: list[str], heldout: str, *,
                   batch_size: int, device) -> dict:
    """FID/KID rows in the independent feature space `name` (distdiff/report/feature_spaces.py)."""
    space = FEATURE_SPACES[name]
    model = space.loader(weights, device)
    features = {set_name: space_features(model, images.with_transform(space.transform), batch_size=batch_size,
                                         device=device, desc=f"{name} features") for set_name, images in sets.items()}
    labels = {set_name: torch.tensor(images.labels) for set_name, images in sets.items()}
    return (_distribution(features, labels, runs, classes, heldout)
            | {"title": space.title, "dim": space.dim, "input_size": space.input_size,
               "weights": space.weights_file(weights)})


def _check_outs(outs: Sequence[Path]) -> list[Path]:
    outs = [Path(out) for out in outs]
    if not outs:
        raise ReportError("give at least one expansion folder OUT.")
    missing = [str(out) for out in outs if not out.is_dir()]
    if missing:
        raise ReportError(f"expansion folder(s) {missing} do not exist; pass folders that expand.py wrote.")
    return outs


def build_report(outs: Sequence[str | Path], *, output_dir: str | Path | None = None, data_root: str | Path = "data",
                 dataset: str | None = None, guide_checkpoint: str | None = None, judge_checkpoint: str | None = None,
                 inception_weights: str | None = None, feature_spaces: Sequence[str] | None = None,
                 heldout_split: str = HELDOUT_SPLIT,
                 sheet_sources: int = SHEET_SOURCES, seed: int = SHEET_SEED, batch_size: int = BATCH_SIZE,
                 device: str | torch.device = "cpu") -> dict:
    """Measure the expansions `outs` and write report.json + report.html into output_dir (default: the one OUT).

    `feature_spaces` names the independent spaces (distdiff/report/feature_spaces.py) measured besides the
    guide's; None measures every one available here.
    """
    begin = time.perf_counter()
    outs = _check_outs(outs)
    spaces, unmeasured = chosen_spaces(feature_spaces, inception_weights)
    if output_dir is None:
        if len(outs) > 1:
            raise ReportError("a comparison of several expansions needs --output_dir for its report.")
        output_dir = outs[0]
    output_dir = Path(output_dir)
    dataset = _dataset_of(outs, dataset)
    train = load_dataset(dataset, "train", root=data_root)
    held = load_dataset(dataset, heldout_split, root=data_root)
    classes = list(train.classes)
    runs = [load_run(out, train, name) for out, name in zip(outs, run_names(outs, ("train", heldout_split)))]
    sets = {"train": train, heldout_split: held} | {run.name: run.images for run in runs}
    report = {"format_version": FORMAT_VERSION, "dataset": dataset, "classes": classes,
              "real": {"train": {"split": "train", "n": len(train)},
                       "heldout": {"split": heldout_split, "n": len(held)}},
              "runs": [{"name": run.name, "path": str(run.path), "images": len(run.images),
                        "sources": int(torch.unique(run.sources[run.sources >= 0]).numel()),
                        "unmatched_images": int((run.sources < 0).sum()), "manifest_records": len(run.records),
                        "guide_checkpoint": run.config.get("guide_checkpoint"),  # the features its energies are in
                        "config": {k: run.config[k] for k in CONFIG_FIELDS if k in run.config}} for run in runs]}
    guide = _guide_of(outs, guide_checkpoint)
    report["guide_checkpoint"] = guide
    if guide is None:
        reason = "no guide checkpoint (none in expand_config.json and no --guide_checkpoint)"
        report |= {"distribution": {"guide": _section_missing(reason) | {"title": GUIDE_SPACE_TITLE}},
                   "label_fidelity": _section_missing(reason), "copying": _section_missing(reason)}
    else:
        sections = _guide_sections(guide, judge_checkpoint, sets, runs, classes, heldout_split,
                                   batch_size=batch_size, device=device)
        report |= {"distribution": {"guide": sections["distribution"] | {"title": GUIDE_SPACE_TITLE}},
                   "label_fidelity": sections["label_fidelity"], "copying": sections["copying"]}
    for name in FEATURE_SPACES:
        report["distribution"][name] = (
            _space_section(name, inception_weights, sets, runs, classes, heldout_split, batch_size=batch_size,
                           device=device) if name in spaces
            else _section_missing(unmeasured[name]) | {"title": FEATURE_SPACES[name].title})
    report["energies"] = {run.name: (energy_summary(run.records) if run.records
                                     else _section_missing(f"no {MANIFEST} records for its images"))
                          for run in runs}
    report["figures"], images = figures.make_figures(report, runs, train, sheet_sources=sheet_sources, seed=seed)
    report["at_a_glance"] = glance.summarise(report)  # the first screen's verdicts, sentences and their numbers
    report["seconds"] = round(time.perf_counter() - begin, 2)
    write_report(report, images, output_dir)
    return report


def write_report(report: dict, images: dict[str, bytes], output_dir: Path) -> None:
    """report.json and report.html, both written atomically."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / REPORT_JSON, json.dumps(report, indent=1, sort_keys=False))
    atomic_write_text(output_dir / REPORT_HTML, report_html.render(report, images))
    logger.info("wrote %s and %s", output_dir / REPORT_JSON, output_dir / REPORT_HTML)



def distance_table(report: dict, *, reference: str) -> str:
    """Markdown: each expansion's FID and KID against real `reference` images in every measured feature space,
    the yardstick row first; columns name their space so guide-space and independent numbers never mix."""
    spaces = [(name, s) for name, s in report["distribution"].items() if s.get("status") == "ok"]
    header = ["set"] + [f"{column}, {name}" for name, _ in spaces for column in ("FID", "KID (1e-3)")]
    sets = [r["set"] for r in spaces[0][1]["rows"] if r["reference"] == reference] if spaces else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in sets:
        cells = [name]
        for _, section in spaces:
            row = next(r["overall"] for r in section["rows"] if r["set"] == name and r["reference"] == reference)
            cells += ["" if row["fid"] is None else f"{row['fid']:.4g}",
                      "" if row["kid_mean"] is None else f"{row['kid_mean'] * 1e3:.3g} ± {row['kid_std'] * 1e3:.2g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
