"""Each real image, or with probability p one of its own synthetic copies: DA-Fusion's training-time sampling.

Their semantic_aug/few_shot_dataset.py (FewShotDataset.__getitem__, github.com/brandontrabucco/da-fusion at
ea784ad) returns, for real image idx, a uniformly chosen synthetic copy of that image when it has copies and a
uniform draw is below synthetic_probability (0.5 in their train_classifier.py), else the real image; the dataset's
length is the number of real images. train_expand.py --synthetic_probability P trains on this instead of the
concatenation of original and synthetic images (this repository's and the DistDiff paper's default).

Seeding: each item's draws come from a numpy Generator seeded with (run seed, one 63-bit draw of torch's global
generator), so they follow torch's seeding as the image transforms do: the training loop reseeds torch every
epoch, and a DataLoader seeds each worker's torch from its own generator, so every epoch is reproducible.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from distdiff.data.datasets import DatasetError, LabeledImages, source_of_synthetic
from distdiff.utils.settings import check_settings


def real_or_copy(num_copies: int, probability: float, rng: np.random.Generator) -> int | None:
    """Which of a real image's `num_copies` copies replaces it (None: the real image), FewShotDataset's rule: a draw
    only where there are copies; a copy when a uniform draw < probability, then each copy equally likely."""
    if num_copies > 0 and rng.random() < probability:
        return int(rng.integers(num_copies))
    return None


def _name(dataset: LabeledImages, index: int) -> str:
    """A sample's file path, or '<dataset>:<stem>' for an in-memory image (for messages)."""
    source = dataset.samples[index].source
    return source if isinstance(source, str) else f"{dataset.name}:{dataset.samples[index].stem}"


def copies_by_source(real: LabeledImages, synthetic: LabeledImages) -> list[list[int]]:
    """For each real image, the indices of the synthetic images made from it (`<stem>_expand_<i>` in its class);
    DatasetError for a synthetic image whose source is not among `real`."""
    index_of = {(s.label, s.stem): i for i, s in enumerate(real.samples)}
    copies: list[list[int]] = [[] for _ in real.samples]
    for j, sample in enumerate(synthetic.samples):
        made_from = source_of_synthetic(sample.stem)
        if made_from is None:
            raise DatasetError(f"synthetic image {_name(synthetic, j)} is not named <source stem>_expand_<i>, so its "
                               f"source image is unknown; --synthetic_probability replaces a real image by its own "
                               f"copies and needs each copy's source.")
        key = (sample.label, made_from[0])
        if key not in index_of:
            raise DatasetError(f"synthetic image {_name(synthetic, j)} was made from '{made_from[0]}' of class "
                               f"'{synthetic.classes[sample.label]}', which is not in the training images; was it "
                               f"expanded from another split or dataset?")
        copies[index_of[key]].append(j)
    return copies


class RealOrSynthetic(torch.utils.data.Dataset):
    """The real images, each replaced with probability `probability` by a uniformly chosen copy of its own."""

    def __init__(self, real: LabeledImages, synthetic: LabeledImages, *, probability: float, seed: int,
                 transform: Callable | None = None):
        check_settings(synthetic_probability=probability)
        self.real, self.synthetic = real, synthetic
        self.copies = copies_by_source(real, synthetic)
        self.probability, self.seed, self.transform = probability, seed, transform

    def __len__(self) -> int:
        return len(self.real)

    def pick(self, index: int) -> tuple[LabeledImages, int]:
        """The dataset and index item `index` draws this time: the real image or one of its copies."""
        if not self.copies[index]:
            return self.real, index  # no draw, as theirs: nothing to choose from
        rng = np.random.default_rng([self.seed % 2**64, int(torch.randint(2**63 - 1, ()))])
        copy = real_or_copy(len(self.copies[index]), self.probability, rng)
        return (self.real, index) if copy is None else (self.synthetic, self.copies[index][copy])

    def __getitem__(self, index: int):
        dataset, chosen = self.pick(index)
        image = dataset.load_image(chosen)
        if self.transform is not None:
            image = self.transform(image)
        return image, dataset.samples[chosen].label
