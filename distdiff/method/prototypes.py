"""Hierarchical prototypes of the real data in the guide's feature space (docs/METHOD.md#hierarchical-prototypes).

Every training image is embedded by the guide classifier (`model.features`), L2-normalised, and
summarised per class by one class prototype (the normalised mean) and up to K group prototypes
(the normalised means of K clusters of the class's features).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import AgglomerativeClustering, KMeans

from distdiff.errors import UserError
from distdiff.models.inference import dataset_outputs
from distdiff.utils.files import UnreadableFileError, atomic_torch_save, load_torch_file

logger = logging.getLogger(__name__)

DEFAULT_K = 3  # groups per class: the paper's K ablation (3 best), the authors' expand_diff.sh K=3
# The project's choice; the authors' code clusters agglomeratively (docs/METHOD.md#hierarchical-prototypes).
DEFAULT_METHOD = "kmeans"
KMEANS_N_INIT = 10  # several restarts so a bad initial draw does not merge two real groups
FORMAT_VERSION = 1


def unit_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Guide features of images [B,3,H,W] as the prototypes see them: [B, D] float32, L2-normalised."""
    return F.normalize(model.features(images).float().flatten(1), dim=1)


def extract_features(model: torch.nn.Module, dataset, *, batch_size: int, device: str | torch.device,
                     num_workers: int = 0) -> torch.Tensor:
    """Guide features of every image in `dataset` (which carries the eval transform): [N, D] float32, unit-norm, CPU."""
    (features,) = dataset_outputs(model, dataset, fn=unit_features, batch_size=batch_size, device=device,
                                  desc="guide features", num_workers=num_workers)
    return features


def _class_members(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Indices of each class's samples; every class must have at least one."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    empty = [c for c, m in enumerate(members) if len(m) == 0]
    if empty:
        raise ValueError(f"classes {empty} have no images, so they have no prototype; every class of the "
                         f"dataset needs at least one training image.")
    return members


def class_prototypes(features: torch.Tensor, labels, *, num_classes: int) -> torch.Tensor:
    """Per-class mean of unit-norm features [N, D], itself L2-normalised: [C, D]."""
    members = _class_members(labels, num_classes)
    means = torch.stack([features[m].mean(dim=0) for m in members])
    return F.normalize(means, dim=1)


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    return KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_N_INIT).fit_predict(points)


def _agglomerative(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    # Deterministic by construction; `seed` is accepted so every method has one signature.
    return AgglomerativeClustering(n_clusters=k, linkage="average").fit_predict(points)


CLUSTERING_METHODS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "kmeans": _kmeans,
    "agglomerative": _agglomerative,  # the authors' public code (average linkage)
}


def group_prototypes(features: torch.Tensor, labels, *, num_classes: int, k: int = DEFAULT_K,
                     method: str = DEFAULT_METHOD, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each class's features [N, D] into up to k groups: (groups [C, k, D] zero-padded, mask [C, k] bool).

    A class with at most k images gets one group per image. Groups are ordered by size (largest
    first, ties by first member) so the output does not depend on the clusterer's label numbering.
    """
    if method not in CLUSTERING_METHODS:
        raise ValueError(f"unknown grouping method '{method}'; choose one of {sorted(CLUSTERING_METHODS)}.")
    if k < 1:
        raise ValueError(f"k (number of groups per class) must be at least 1, got {k}.")
    members = _class_members(labels, num_classes)
    groups = features.new_zeros(num_classes, k, features.shape[1])
    mask = torch.zeros(num_classes, k, dtype=torch.bool)
    for c, idx in enumerate(members):
        points = features[idx]
        if len(idx) <= k:
            assignment = np.arange(len(idx))
        else:
            assignment = CLUSTERING_METHODS[method](points.double().numpy(), k, seed)
        # A clusterer may leave a cluster empty (e.g. duplicate images), so only present ids count.
        clusters = [np.flatnonzero(assignment == g) for g in np.unique(assignment)]
        clusters.sort(key=lambda m: (-len(m), m[0]))
        for j, cluster in enumerate(clusters):
            groups[c, j] = F.normalize(points[torch.as_tensor(cluster)].mean(dim=0), dim=0)
            mask[c, j] = True
    return groups, mask


class PrototypeFileError(UserError):
    """A prototype file that cannot be read (truncated, foreign or from another format)."""


@dataclass
class Prototypes:
    """Class prototypes [C, D], group prototypes [C, K, D] with validity mask [C, K], and provenance."""

    classes: torch.Tensor
    groups: torch.Tensor
    group_mask: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.classes.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.classes.shape[1]

    def to(self, device: str | torch.device) -> "Prototypes":
        """The same prototypes on `device`."""
        return Prototypes(self.classes.to(device), self.groups.to(device), self.group_mask.to(device),
                          dict(self.metadata))

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file in the same folder, then rename); metadata must be JSON-serialisable."""
        path = Path(path)
        try:
            metadata = json.dumps(self.metadata, sort_keys=True)
        except TypeError as err:
            raise ValueError(f"prototype metadata must be JSON-serialisable (use str for paths): {err}") from err
        payload = {"format_version": FORMAT_VERSION, "classes": self.classes.detach().cpu(),
                   "groups": self.groups.detach().cpu(), "group_mask": self.group_mask.detach().cpu(),
                   "metadata": metadata}
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> "Prototypes":
        """Read a file written by `save` (tensors on CPU); PrototypeFileError names a file that is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prototype file {path} does not exist; compute it first or fix the path.")
        try:
            payload = load_torch_file(path)
        except UnreadableFileError as err:
            raise PrototypeFileError(f"{path} is not a readable prototype file ({err.reason})") from err
        if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
            raise PrototypeFileError(f"{path} is not a prototype file written by distdiff (format {FORMAT_VERSION}).")
        try:
            return cls(payload["classes"], payload["groups"], payload["group_mask"], json.loads(payload["metadata"]))
        except (KeyError, TypeError, ValueError) as err:
            raise PrototypeFileError(f"{path} is an incomplete prototype file ({type(err).__name__}: {err})") from err


def compute_prototypes(model: torch.nn.Module, dataset, *, k: int = DEFAULT_K, method: str = DEFAULT_METHOD,
                       seed: int = 0, batch_size: int = 64, device: str | torch.device,
                       metadata: dict | None = None) -> Prototypes:
    """Class and group prototypes of `dataset` (a LabeledImages with the guide's eval transform)."""
    features = extract_features(model, dataset, batch_size=batch_size, device=device)
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    num_classes = len(dataset.classes)
    groups, mask = group_prototypes(features, labels, num_classes=num_classes, k=k, method=method, seed=seed)
    facts = {"class_names": list(dataset.classes), "num_images": len(dataset), "feature_dim": features.shape[1],
             "k": k, "method": method, "seed": seed}
    metadata = dict(metadata or {})
    conflicts = {key: (metadata[key], value) for key, value in facts.items()
                 if key in metadata and metadata[key] != value}
    if conflicts:
        raise ValueError(f"metadata contradicts what the prototypes were computed with (given, actual): {conflicts}.")
    info = {"dataset": getattr(dataset, "name", ""), **facts, **metadata}
    logger.info("prototypes: %d classes, %d groups, dim %d", num_classes, int(mask.sum()), features.shape[1])
    return Prototypes(class_prototypes(features, labels, num_classes=num_classes), groups, mask, info)
