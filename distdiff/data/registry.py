"""The dataset registry: one entry per dataset holds everything that differs between datasets.

An entry names the loader of the dataset's splits, its class prompt template, the classifier's
image size and flip default, and the default Stable Diffusion model and guide architecture of
expand.py, and the expansion settings the paper changes for that dataset. Adding a dataset is adding one `DatasetSpec` to `DATASETS`; `imagefolder:PATH` gets
the paper's defaults. Defaults are the paper's (docs/METHOD.md#defaults).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

from distdiff.data import paper
from distdiff.data import shift
from distdiff.data.datasets import (DEFAULT_PROMPT, DIGITS_SIZE, SPLITS, DatasetError, LabeledImages, load_digits_split,
                                    load_imagefolder)
from distdiff.data.fashion_mnist import FASHION_SIZE, load_fashion_mnist

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # distdiff/data/registry.py -> the checkout (checkpoint/ beside distdiff/)
IMAGEFOLDER = "imagefolder:"
DEFAULT_SD_MODEL = "CompVis/stable-diffusion-v1-4"  # the paper's SD v1.4 (docs/METHOD.md#defaults)
# The offline embedded model (scripts/train_tiny_sd.py), found from the repository, not the working directory.
TINY_SD_DIGITS = str(REPO_ROOT / "checkpoint" / "tiny-sd-digits")
# Trained on the fashion-mnist pool by `python scripts/train_tiny_sd.py --dataset fashion-mnist`.
TINY_SD_FASHION = str(REPO_ROOT / "checkpoint" / "tiny-sd-fashion")


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between datasets; every field but the loader defaults to the paper's setting."""

    loader: Callable[[Path, str], LabeledImages]  # (data root, split) -> the split's images
    prompt: str = DEFAULT_PROMPT  # class prompt template, "{}" is the class name
    image_size: int = 224  # classifier input: the paper's RandomCrop 224 (docs/METHOD.md#defaults)
    flip: bool = True  # the paper's horizontal flip in the training recipe
    sd_model: str = DEFAULT_SD_MODEL  # hub id, or an absolute path to a local diffusers folder
    guide_arch: str = "resnet50"  # the paper's guide is ResNet-50 trained from scratch
    # expand.py flags whose paper value differs for this dataset ({flag: value}); the flag, when given, wins
    expand_defaults: dict = field(default_factory=dict)


DATASETS: dict[str, DatasetSpec] = {
    # 32 px digits: a mirrored digit is another (or no) digit; the small CNN and the embedded tiny SD fit the size.
    "digits": DatasetSpec(load_digits_split, prompt="a photo of the digit {}.", image_size=DIGITS_SIZE, flip=False,
                          sd_model=TINY_SD_DIGITS, guide_arch="smallcnn"),
    # 32 px like digits (the small CNN, a tiny SD). Unlike a digit, a mirrored garment or shoe is the same
    # class, so the paper's horizontal flip stays on. Its cost: the dataset's shoes all point one way (a
    # class-mean image differs from its mirror by 57-98% of its mean for sandal, sneaker, ankle boot, 6-9%
    # for garments), so flipped shoes show a pose the test set lacks; --no_flip measures the alternative.
    "fashion-mnist": DatasetSpec(load_fashion_mnist, prompt="a photo of a {}.", image_size=FASHION_SIZE, flip=True,
                                 sd_model=TINY_SD_FASHION, guide_arch="smallcnn"),
    "caltech-101": DatasetSpec(paper.load_caltech101),
    "cifar100-subset": DatasetSpec(paper.load_cifar100_subset),
    "stanford_cars": DatasetSpec(paper.load_stanford_cars),
    "dtd": DatasetSpec(paper.load_dtd, prompt="{} texture."),  # the paper's DTD prompt (docs/METHOD.md#datasets)
    "oxford_flowers": DatasetSpec(paper.load_oxford_flowers),
    "oxford_pets": DatasetSpec(paper.load_oxford_pets),
    "imagenette": DatasetSpec(paper.load_imagenette),
    # The paper expands PathMNIST at strength 0.2 with M = 10; the prompt is the authors' code's.
    "pathmnist": DatasetSpec(paper.load_pathmnist, prompt="a colon pathological image of {}.",
                             expand_defaults={"strength": 0.2, "guidance_step": 10}),
}
# Digits with a generator-target gap (distdiff/data/shift.py, docs/shift_benchmark.md): the digits entry with
# shifted images or unseen class names, expanded by the same digits generator.
DATASETS.update({name: replace(DATASETS["digits"], loader=partial(shift.load_shifted_digits, spec, name),
                               prompt=spec.prompt_template or DATASETS["digits"].prompt)
                 for name, spec in shift.SHIFTED_DIGITS.items()})


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of `name`; `imagefolder:PATH` gets the paper's defaults with PATH's folders."""
    if name.startswith(IMAGEFOLDER):
        path = name[len(IMAGEFOLDER):]
        return DatasetSpec(lambda root, split: load_imagefolder(path, split))
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; choose one of {sorted(DATASETS)} or imagefolder:PATH.")
    return DATASETS[name]


def load_dataset(name: str, split: str, *, root: str | Path = "data", transform: Callable | None = None
                 ) -> LabeledImages:
    """Split `split` of dataset `name` ('digits', 'imagefolder:PATH' or a registered name), with its prompt."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split '{split}'; choose one of {SPLITS}.")
    spec = dataset_spec(name)
    dataset = spec.loader(Path(root), split)
    dataset.prompt_template = spec.prompt
    dataset.transform = transform
    logger.info("loaded %s/%s: %d images, %d classes", name, split, len(dataset), len(dataset.classes))
    return dataset


def dataset_has_split(name: str, split: str, root: str | Path = "data") -> bool:
    """Whether `load_dataset(name, split)` would find that split (used to pick a validation source)."""
    try:
        load_dataset(name, split, root=root)
    except DatasetError:
        return False
    return True
