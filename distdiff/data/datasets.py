"""Labelled image sets and the loaders that need no download: digits, imagefolder:PATH, synthetic images.

Every loader returns a `LabeledImages` holding samples (an image file path or an in-memory
uint8 array, a label, a unique stem) and the class names. Which loader, prompt template and
defaults a dataset name stands for is distdiff.data.registry's job; `registry.load_dataset(name,
split)` is the entry point the scripts use.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

from distdiff.errors import UserError
from distdiff.utils.images import open_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DEFAULT_PROMPT = "a photo of a {}."  # the paper's class prompt (docs/METHOD.md#pipeline)
SPLITS = ("train", "val", "test", "pool")  # pool: digits and fashion-mnist only, a generator's training images


class DatasetError(UserError):
    """A dataset is missing, malformed, or asked for a split it does not have."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: `source` is a file path or an HxWx3 uint8 array."""

    source: str | np.ndarray
    label: int
    stem: str  # unique within its class; synthetic files are `<stem>_expand_<i>.png`


class LabeledImages(torch.utils.data.Dataset):
    """A list of labelled images with class names and a prompt template."""

    def __init__(self, samples: list[Sample], classes: list[str], prompt_template: str = DEFAULT_PROMPT,
                 transform: Callable | None = None, name: str = ""):
        self.samples = list(samples)
        self.classes = list(classes)
        self.prompt_template = prompt_template
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Label of every sample, in order."""
        return [s.label for s in self.samples]

    def load_image(self, index: int) -> Image.Image:
        """The sample's image as an RGB PIL image, untransformed."""
        source = self.samples[index].source
        if isinstance(source, np.ndarray):
            return Image.fromarray(source).convert("RGB")
        return open_image(source)  # EXIF-upright, 16-bit scaled; ImageError names an unreadable file

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.samples[index].label

    def with_transform(self, transform: Callable | None) -> "LabeledImages":
        """The same samples with another transform."""
        return LabeledImages(self.samples, self.classes, self.prompt_template, transform, self.name)

    def subset(self, indices) -> "LabeledImages":
        """The samples at `indices`, same classes, prompt and transform."""
        return LabeledImages([self.samples[i] for i in indices], self.classes, self.prompt_template,
                             self.transform, self.name)

    def prompt(self, label: int) -> str:
        """The text prompt for a class, from the dataset's template."""
        return self.prompt_template.format(self.classes[label])

    def class_counts(self) -> list[int]:
        """Number of samples in each class, indexed by label."""
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 handwritten digits, the embedded offline default.

DIGITS_SIZE = 32  # 8x8 upscaled so standard conv nets and the tiny SD's VAE can downsample it
# Per class, after a fixed shuffle: the first 10 images train (few-shot, like the paper's small
# training sets, docs/METHOD.md#datasets), the next 10 validate, the next 60 test, and the rest
# (about 100 per class) form the generator pool that only the embedded diffusion model is trained on.
DIGITS_SPLIT_SIZES = {"train": 10, "val": 10, "test": 60}
DIGITS_SEED = 0


def grey_to_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """A [H, W] uint8 grey image as a [size, size, 3] uint8 RGB image (bicubic resize)."""
    gray = Image.fromarray(image, mode="L").resize((size, size), Image.BICUBIC)
    return np.asarray(gray.convert("RGB"))


def per_class_orders(labels, label_values: Iterable[int], seed) -> list[np.ndarray]:
    """Indices of each of `label_values` in a seeded random order: one generator (numpy's default_rng(seed)) draws
    the classes' permutations in `label_values`' order. Every seeded per-class split of the package is cut from this."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    return [rng.permutation(np.flatnonzero(labels == label)) for label in label_values]


def per_class_split_indices(labels: np.ndarray, sizes: dict[str, int], split: str, *, num_classes: int, seed: int,
                            source: str) -> np.ndarray:
    """Sorted indices of `split`: per class, one seeded shuffle cut into `sizes` blocks in order; 'pool' is the rest."""
    needed = sum(sizes.values())
    chosen = []
    for label, members in enumerate(per_class_orders(labels, range(num_classes), seed)):
        # Short classes would silently give short (or empty) splits; every split must keep its documented size.
        if len(members) < needed:
            raise DatasetError(f"{source}: class {label} has {len(members)} images; the per-class splits {sizes} "
                               f"need at least {needed}. The data looks incomplete.")
        start = 0
        for name, size in sizes.items():
            if name == split:
                chosen.append(members[start:start + size])
            start += size
        if split == "pool":
            chosen.append(members[start:])
    return np.sort(np.concatenate(chosen))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as [N, 32, 32, 3] uint8 images and [N] labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = [grey_to_rgb((image * (255.0 / 16.0)).round().astype(np.uint8), DIGITS_SIZE) for image in bunch.images]
    return np.stack(images), bunch.target.astype(np.int64)


def digits_split_indices(split: str, seed: int = DIGITS_SEED) -> np.ndarray:
    """Indices into scikit-learn's digits array for one of the four disjoint splits."""
    _, labels = _digits_arrays()
    return per_class_split_indices(labels, DIGITS_SPLIT_SIZES, split, num_classes=10, seed=seed, source="digits")


def load_digits_split(root: str | Path, split: str) -> LabeledImages:
    """The embedded digits dataset (no files needed; `root` is unused)."""
    images, labels = _digits_arrays()
    samples = [Sample(images[i], int(labels[i]), f"digit_{i:04d}") for i in digits_split_indices(split)]
    return LabeledImages(samples, [str(d) for d in range(10)], name="digits")


# ---------------------------------------------------------------------------------------------
# imagefolder:PATH — any user's dataset as PATH/<split>/<class>/<image>.


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def scan_class_folders(split_dir: Path, classes: list[str] | None = None, *, layout: str,
                       section: str) -> tuple[list[Sample], list[str]]:
    """Samples from `split_dir/<class>/<image>`; classes are sorted folder names unless given."""
    if not split_dir.is_dir():
        raise DatasetError(f"missing folder {split_dir}. Expected layout: {layout} "
                           f"(see INSTALL.md, section '{section}').")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetError(f"{split_dir} has no class folders. Expected layout: {layout} "
                           f"(see INSTALL.md, section '{section}').")
    defining = classes is None  # this split defines the classes, so each needs images
    if defining:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{split_dir} has class folders {unknown} that the train split does not have; "
                           f"every split must use the train split's classes (see INSTALL.md, section '{section}').")
    samples = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue  # a split may lack a class (e.g. a small test set); the train split defines them
        files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
        others = [p.name for p in files if not _is_image(p)]
        if others:
            raise DatasetError(f"{class_dir} holds files that are not images ({others[:3]}); image files "
                               f"must end in one of {IMAGE_EXTENSIONS}. Move the other files out.")
        stems = {}
        for path in files:
            if path.stem in stems:
                raise DatasetError(f"{path} and {stems[path.stem]} share the stem '{path.stem}'; synthetic "
                                   f"images are named after it, so rename one of them.")
            stems[path.stem] = path
            samples.append(Sample(str(path), label, path.stem))
        if defining and not stems:
            raise DatasetError(f"class folder {class_dir} holds no images, so class '{name}' could not be "
                               f"learned; add its images or remove the folder.")
    if not samples:
        raise DatasetError(f"{split_dir} has class folders but no images (see INSTALL.md, section '{section}').")
    return samples, classes


IMAGEFOLDER_LAYOUT = "PATH/train/<class>/<image>, PATH/test/<class>/<image>, optional PATH/val/<class>/<image>"


def load_imagefolder(path: str | Path, split: str) -> LabeledImages:
    """A user's dataset laid out as PATH/{train,val,test}/<class>/<image>."""
    path = Path(path)
    if split == "pool":
        raise DatasetError("imagefolder datasets have no 'pool' split (only digits and fashion-mnist have one).")
    if split == "val" and not (path / "val").is_dir():
        raise DatasetError(f"{path} has no val/ folder; pass --val_fraction to hold out part of train instead.")
    _, classes = scan_class_folders(path / "train", layout=IMAGEFOLDER_LAYOUT, section="Your own dataset")
    samples, classes = scan_class_folders(path / split, classes, layout=IMAGEFOLDER_LAYOUT,
                                          section="Your own dataset")
    return LabeledImages(samples, classes, name=f"imagefolder:{path}")


# ---------------------------------------------------------------------------------------------
# Synthetic images written by expand.py: OUT/<class name>/<source stem>_expand_<i>.png.

EXPANDED_LAYOUT = "EXPANDED_DIR/<class name>/<image>.png (what expand.py writes)"
_SYNTHETIC_STEM = re.compile(r"(?P<stem>.+)_expand_(?P<copy>\d+)")


def synthetic_stem(source_stem: str, copy: int) -> str:
    """The file stem of copy `copy` of a source image: `<source stem>_expand_<copy>` (train_expand.py and the
    report match copies to sources by it)."""
    return f"{source_stem}_expand_{copy}"


def source_of_synthetic(stem: str) -> tuple[str, int] | None:
    """(source stem, copy) of a synthetic image's file stem, or None for a name synthetic_stem does not make."""
    match = _SYNTHETIC_STEM.fullmatch(stem)
    return (match["stem"], int(match["copy"])) if match else None


def load_expanded(expanded_dir: str | Path, classes: list[str], *, prompt_template: str = DEFAULT_PROMPT
                  ) -> LabeledImages:
    """Synthetic images under `expanded_dir/<class>/`, labelled by their folder's index in `classes`."""
    expanded_dir = Path(expanded_dir)
    if not expanded_dir.is_dir():
        raise DatasetError(f"expanded-data folder {expanded_dir} does not exist; run expand.py to create it "
                           f"or fix the path. Expected layout: {EXPANDED_LAYOUT}.")
    # Only class subfolders matter: manifest.jsonl and other top-level files are expand.py's bookkeeping.
    found = sorted(p.name for p in expanded_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise DatasetError(f"{expanded_dir} has class folders {unknown} that the dataset does not have; its "
                           f"classes are {list(classes)}. Was it expanded from another dataset?")
    if not found:
        raise DatasetError(f"{expanded_dir} has no class folders; run expand.py first. "
                           f"Expected layout: {EXPANDED_LAYOUT}.")
    samples, _ = scan_class_folders(expanded_dir, list(classes), layout=EXPANDED_LAYOUT,
                                    section="Synthetic images")
    return LabeledImages(samples, list(classes), prompt_template, name=f"expanded:{expanded_dir}")


def dataset_slug(name: str) -> str:
    """A folder-safe name for a dataset ('imagefolder:/x/pets' -> 'pets')."""
    if name.startswith("imagefolder:"):
        name = Path(name.split(":", 1)[1].rstrip("/")).name or "imagefolder"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def holdout(dataset: LabeledImages, fraction: float, *, seed: int = 0) -> tuple[LabeledImages, LabeledImages]:
    """Split off `fraction` of each class (at least one image, never a class's last) as validation."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"--val_fraction must be in (0, 1), got {fraction}.")
    train_idx, val_idx = [], []
    for members in per_class_orders(dataset.labels, range(len(dataset.classes)), seed):
        n_val = min(max(1, round(fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
        val_idx.extend(members[:n_val].tolist())
        train_idx.extend(members[n_val:].tolist())
    return dataset.subset(sorted(train_idx)), dataset.subset(sorted(val_idx))

