"""The report's figures, as PNG bytes: contact sheets of sources and their copies, energy histograms, and the
first screen's strip of real beside synthetic images (distdiff/report/html.py embeds them in the page).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib
import torch

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from distdiff.data.datasets import LabeledImages, per_class_orders  # noqa: E402

CELL = 72  # pixels per image on a contact sheet
GAP = 4
SOURCE_GAP = 16  # wider gap between a source and its copies
# The first screen's strip: per expansion, one real source and its first copies for a few classes spread over the
# class list, at a larger size than the contact sheets so they read at a glance.
GLANCE_CLASSES = 4
GLANCE_COPIES = 3
GLANCE_CELL = 88
STAGES = ("before", "after", "final")
STAGE_NAMES = {"before": "before guidance", "after": "right after guidance", "final": "final image"}


def _cell(image: Image.Image, cell: int = CELL) -> Image.Image:
    resample = Image.NEAREST if max(image.size) < cell else Image.LANCZOS
    return image.resize((cell, cell), resample)


def contact_sheet(rows: Sequence[Sequence[Image.Image]], *, cell: int = CELL, source_gap: int = SOURCE_GAP
                  ) -> Image.Image:
    """One row per source: the source image, a wider gap, then its copies (source_gap=0: evenly spaced images)."""
    width = max(len(r) for r in rows)
    sheet = Image.new("RGB", (width * cell + (width - 1) * GAP + source_gap, len(rows) * (cell + GAP) - GAP), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            left = x * (cell + GAP) + (source_gap if x else 0)
            sheet.paste(_cell(image, cell), (left, y * (cell + GAP)))
    return sheet


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def energy_histograms(summary: dict, title: str) -> bytes:
    """D_c and D_g histograms before guidance, right after, and of the final image."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3))
    for axis, level in zip(axes, ("D_c", "D_g")):
        entry = summary[level]
        axis.set_title(f"{title}: {level}")
        if entry.get("status") != "ok":
            axis.text(0.5, 0.5, "missing", ha="center", va="center", transform=axis.transAxes)
            continue
        for stage in STAGES:
            if "histogram" in entry[stage]:
                axis.stairs(entry[stage]["histogram"], entry["bin_edges"], label=STAGE_NAMES[stage])
        axis.set_xlabel("distance to the prototype (guide features)")
        axis.set_ylabel("images")
        axis.legend(fontsize=7)
    return _figure_png(figure)


def seeded_sources(run_sources: torch.Tensor, train_labels: Sequence[int], label: int, count: int, seed: int
                   ) -> list[int]:
    """`count` train sources of class `label` with copies in the run, in a seeded order of the whole class.

    The order depends only on the seed and the train split, so every run of a comparison shows
    the same sources (those it has copies of).
    """
    present = {int(s) for s in run_sources.tolist()}
    (order,) = per_class_orders(train_labels, [label], [seed, label])
    return [int(s) for s in order if int(s) in present][:count]


def spread(items: Sequence, count: int) -> list:
    """`count` of `items` evenly spaced from the first to the last (all of them when there are no more), in order."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(k * (len(items) - 1) / (count - 1))] for k in range(count)]


def glance_strip(run, train: LabeledImages, firsts: dict[int, int], copies: dict[int, list], index: int,
                 images: dict[str, bytes]) -> dict:
    """The first screen's strip of `run`: for GLANCE_CLASSES classes spread over those with copies, the class's first
    seeded source (the contact sheet's first row) and up to GLANCE_COPIES of its copies, each side as one PNG.

    Returns what report.json says of it: per class the real image (its train stem, and its file when it has one) and
    the synthetic files, relative to the expansion folder, in the order shown.
    """
    rows = []
    for label in spread(sorted(firsts), GLANCE_CLASSES):
        source = firsts[label]
        shown = [k for _, k in sorted(copies[source])][:GLANCE_COPIES]
        real_key, synthetic_key = f"run{index}/glance_real{label}", f"run{index}/glance_synthetic{label}"
        images[real_key] = _png(_cell(train.load_image(source), GLANCE_CELL))
        images[synthetic_key] = _png(contact_sheet([[run.images.load_image(k) for k in shown]], cell=GLANCE_CELL,
                                                   source_gap=0))
        real = train.samples[source].source
        rows.append({"class": train.classes[label], "real_stem": train.samples[source].stem,
                     "real_file": real if isinstance(real, str) else None, "real_image": real_key,
                     "synthetic": [str(Path(run.images.samples[k].source).relative_to(run.path)) for k in shown],
                     "synthetic_image": synthetic_key})
    return {"classes": rows}


def make_figures(report: dict, runs, train: LabeledImages, *, sheet_sources: int, seed: int
                 ) -> tuple[dict, dict[str, bytes]]:
    """Contact sheets per run and class, energy histograms per run, the first screen's strip per run: (what
    report.json says of them, PNG bytes by id)."""
    meta, images = {}, {}
    for index, run in enumerate(runs):
        entry = {"contact_sheets": {}}
        copies, firsts = {}, {}
        for k, sample in enumerate(run.images.samples):
            copies.setdefault(int(run.sources[k]), []).append((sample.stem, k))
        for label, name in enumerate(train.classes):
            chosen = seeded_sources(run.sources, train.labels, label, sheet_sources, seed)
            if not chosen:
                continue
            firsts[label] = chosen[0]
            rows = [[train.load_image(s)] + [run.images.load_image(k) for _, k in sorted(copies[s])] for s in chosen]
            key = f"run{index}/sheet_class{label}"
            images[key] = _png(contact_sheet(rows))
            entry["contact_sheets"][name] = {"image": key, "sources": [train.samples[s].stem for s in chosen]}
        entry["glance_strip"] = glance_strip(run, train, firsts, copies, index, images)
        energies = report["energies"][run.name]
        if energies.get("status") != "missing":
            key = f"run{index}/energies"
            images[key] = energy_histograms(energies, run.name)
            entry["energies"] = key
        meta[run.name] = entry
    return meta, images


# ---------------------------------------------------------------------------------------------
# HTML
