"""Metrics of a synthetic image set against real images: FID/KID, label fidelity, copying, energies.

Every metric works on features computed once per image set, so a comparison of several
expansions measures each against the very same real features: the guide classifier's pooled
features, L2-normalised (the space the prototypes, the energy D_c/D_g and the guidance live in,
docs/METHOD.md), and the independent spaces of distdiff/report/feature_spaces.py.
FID and KID are torchmetrics' (FrechetInceptionDistance / KernelInceptionDistance) fed through a
pass-through feature module, so the Fréchet and MMD math is theirs.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from distdiff.errors import UserError
from distdiff.method.records import STEP_KEYS, Record
from distdiff.method.prototypes import unit_features
from distdiff.models.inference import dataset_outputs

logger = logging.getLogger(__name__)

KID_SUBSETS = 100  # torchmetrics' default number of KID subsets
KID_SUBSET_SIZE = 1000  # torchmetrics' default; capped by the set sizes (see kid_subset_size)
METRIC_SEED = 0  # KID draws random subsets: a fixed seed makes a report reproducible
UNCHANGED_DISTANCE = 1e-3  # a copy this close to its source (unit-norm features) is its source returned


class ReportError(UserError):
    """A report cannot be made from what was given (missing files, mismatched runs, bad flags)."""


class FeatureInput(nn.Module):
    """Pass-through 'feature extractor': torchmetrics receives precomputed features [B, D] as its input."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def kid_subset_size(n_real: int, n_fake: int, cap: int = KID_SUBSET_SIZE) -> int:
    """KID's subset size: torchmetrics' default, capped at half the smaller set (at least 2).

    KID needs subsets no larger than either set; at half the smaller set the subsets differ from
    draw to draw, so KID's std over subsets says how much the estimate moves at this sample size.
    """
    return max(2, min(cap, n_real // 2, n_fake // 2))


def fid_kid(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = KID_SUBSETS,
            subset_cap: int = KID_SUBSET_SIZE, seed: int = METRIC_SEED) -> dict:
    """FID and KID (mean, std over subsets) between feature sets [N, D] and [M, D], with the sample sizes."""
    if len(real) < 4 or len(fake) < 4:
        return {"n_real": len(real), "n_fake": len(fake), "fid": None, "kid_mean": None, "kid_std": None,
                "kid_subset_size": None, "note": "fewer than 4 images"}
    real, fake = real.double(), fake.double()
    extractor = FeatureInput(real.shape[1])
    fid = FrechetInceptionDistance(feature=extractor).double()
    fid.update(real, real=True)
    fid.update(fake, real=False)
    size = kid_subset_size(len(real), len(fake), subset_cap)
    with warnings.catch_warnings():  # its warning about keeping all features in memory: ours are small vectors
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=extractor, subsets=subsets, subset_size=size)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"n_real": len(real), "n_fake": len(fake), "fid": finite_or_none(float(fid.compute())),
            "kid_mean": finite_or_none(float(kid_mean)), "kid_std": finite_or_none(float(kid_std)),
            "kid_subset_size": size}


def fid_kid_by_class(real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor,
                     classes: Sequence[str], **kwargs) -> dict:
    """fid_kid overall and for each class name (each class against the same class of the reference)."""
    per_class = {name: fid_kid(real[real_labels == c], fake[fake_labels == c], **kwargs)
                 for c, name in enumerate(classes) if bool((fake_labels == c).any())}
    return {"overall": fid_kid(real, fake, **kwargs), "per_class": per_class}


def label_fidelity(predicted: torch.Tensor, intended: torch.Tensor, classes: Sequence[str]) -> dict:
    """Share of images whose predicted class [N] is their intended one [N], overall and per class."""
    correct = (predicted == intended).double()
    per_class = {name: {"share": float(correct[intended == c].mean()), "n": int((intended == c).sum())}
                 for c, name in enumerate(classes) if bool((intended == c).any())}
    return {"overall": {"share": float(correct.mean()), "n": len(intended)}, "per_class": per_class}


def copy_distances(copies: torch.Tensor, copy_sources: torch.Tensor, source_features: torch.Tensor) -> dict:
    """Per source: mean distance among its copies and from each copy to it (features unit-norm, Euclidean).

    copies [M, D] are the synthetic images' features, copy_sources [M] the row of each one's source
    in source_features [S, D]. A run that returns its sources unchanged has copy_to_source ~ 0.
    """
    if len(copies) == 0:
        return {"status": "missing", "reason": "no synthetic file is named after a train image (<stem>_expand_<i>.png)"}
    rows = []
    for source in torch.unique(copy_sources).tolist():
        members = copies[copy_sources == source]
        to_source = torch.linalg.vector_norm(members - source_features[source], dim=1)
        pairwise = torch.pdist(members) if len(members) > 1 else torch.empty(0)
        rows.append({"source": source, "copies": len(members), "copy_to_source": float(to_source.mean()),
                     "among_copies": float(pairwise.mean()) if len(pairwise) else None,
                     "unchanged": int((to_source < UNCHANGED_DISTANCE).sum())})
    among = [r["among_copies"] for r in rows if r["among_copies"] is not None]
    return {"sources": len(rows), "copy_to_source": float(np.mean([r["copy_to_source"] for r in rows])),
            "among_copies": float(np.mean(among)) if among else None,
            "unchanged_distance": UNCHANGED_DISTANCE, "unchanged_share": sum(r["unchanged"] for r in rows) / max(1, sum(r["copies"] for r in rows)),
            "per_source": rows}


def energy_summary(records: Sequence[dict], *, bins: int = 20) -> dict:
    """D_c / D_g before guidance, right after it, and of the final image, from manifest records; "step":
    means of the transform step's STEP_KEYS (eps saturation, random-draw and gradient moves).

    A level whose fields are absent or null in every record (old runs, --no_energy_log, plain SD
    without a guide) is reported as {"status": "missing"}, never as zeros.
    """
    summary = {}
    for level in ("D_c", "D_g"):
        stages = {}
        for stage in ("before", "after", "final"):
            key = Record.energy(level, stage).value
            values = np.array([r[key] for r in records if r.get(key) is not None], dtype=float)
            stages[stage] = values
        present = {s: v for s, v in stages.items() if len(v)}
        if not present:
            summary[level] = {"status": "missing", "reason": "not in manifest.jsonl (an old run, --no_energy_log, "
                                                            "or no guide to measure it)"}
            continue
        low = min(float(v.min()) for v in present.values())
        high = max(float(v.max()) for v in present.values())
        edges = np.linspace(low, high if high > low else low + 1e-6, bins + 1)
        entry = {"status": "ok", "bin_edges": edges.tolist()}
        for stage in ("before", "after", "final"):
            values = stages[stage]
            entry[stage] = ({"mean": float(values.mean()), "n": len(values),
                             "histogram": np.histogram(values, edges)[0].tolist()} if len(values)
                            else {"status": "missing", "reason": f"no {level}_{stage} in manifest.jsonl"})
        keys = [Record.energy(level, when).value for when in ("before", "after", "final")]
        paired = [tuple(r[k] for k in keys) for r in records if all(r.get(k) is not None for k in keys)]
        entry["moved_closer_by_guidance"] = (float(np.mean([a < b for b, a, _ in paired])) if paired else None)
        entry["final_closer_than_before"] = (float(np.mean([f < b for b, _, f in paired])) if paired else None)
        entry["paired_n"] = len(paired)
        summary[level] = entry
    step = {}
    for key in (k.value for k in STEP_KEYS):
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            step[key] = {"mean": float(np.mean(values)), "n": len(values)}
    summary["step"] = step or {"status": "missing", "reason": "not in manifest.jsonl (no transform guidance, an "
                                                              "older run, or --no_energy_log)"}
    return summary


def guide_outputs(model: nn.Module, dataset, *, batch_size: int, device: str | torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm guide features [N, D] (the prototypes' space) and predicted labels [N] of a dataset carrying the
    guide's eval transform."""
    return dataset_outputs(model, dataset, fn=lambda m, x: (unit_features(m, x), m(x).argmax(dim=1)),
                           batch_size=batch_size, device=device, desc="guide features")


def finite_or_none(value):
    """JSON cannot hold NaN/inf: such values become None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value

