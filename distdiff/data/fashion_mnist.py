"""Fashion-MNIST: 28x28 grey clothing images in ten classes, read from the four standard idx files.

The files are looked for, in order, under `<root>/fashion-mnist/`, torchvision's layout
`<root>/FashionMNIST/raw/` and Debian's `/usr/share/datasets/fashion-mnist/` (package
dataset-fashion-mnist), each file gzipped or not. Where none holds them, torchvision downloads
them into `<root>/FashionMNIST/raw/` (which needs a network); failing that, a DatasetError says
how to get them (INSTALL.md, section 'Fashion-MNIST').

Splits are fixed, seeded and disjoint, like the digits' (distdiff.data.datasets): per class, 10 images of
the official training set train (the few-shot set that is expanded) and 10 more validate; the
rest of the official training set (59,800 images) is the generator pool, never seen by a
classifier; test is the official 10,000-image test set.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from distdiff.data.datasets import DatasetError, LabeledImages, Sample, grey_to_rgb, per_class_split_indices

logger = logging.getLogger(__name__)

SECTION = "Fashion-MNIST"  # the INSTALL.md section every error names
FASHION_SIZE = 32  # 28x28 upscaled like the digits: the small CNN and a tiny SD's VAE downsample 32 px by 2^3
FASHION_SPLIT_SIZES = {"train": 10, "val": 10}  # per class, from the official training set; pool is the rest
FASHION_SEED = 0
# The official class names, in label order (the dataset's README).
OFFICIAL_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")
# LabeledImages carries one name per class, and that name is at once the prompt word, the folder of
# the synthetic images (OUT/<class>/, which load_expanded matches against it) and the class list a
# classifier checkpoint stores; a second, prompt-only name would have to be threaded through all
# of them. So the one name must be a valid folder name: "T-shirt/top" is not, and "T-shirt or top"
# says the same in a prompt ("a photo of a T-shirt or top."). The other nine are the official names.
FOLDER_SAFE_NAMES = {"T-shirt/top": "T-shirt or top"}
FASHION_CLASSES = tuple(FOLDER_SAFE_NAMES.get(name, name) for name in OFFICIAL_CLASSES)

# The four idx files: (official part, kind) -> file name without .gz.
IDX_FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
             ("t10k", "images"): "t10k-images-idx3-ubyte", ("t10k", "labels"): "t10k-labels-idx1-ubyte"}
# kind -> (magic number, number of dimensions): unsigned bytes (0x08) with 3 or 1 dimensions.
IDX_FORMATS = {"images": (2051, 3), "labels": (2049, 1)}
SPLIT_PARTS = {"train": "train", "val": "train", "pool": "train", "test": "t10k"}  # split -> official part
LAYOUTS = ("fashion-mnist", "FashionMNIST/raw")  # under the data root: ours first, then torchvision's
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


def idx_file(folder: Path, name: str) -> Path | None:
    """`folder/name`, else `folder/name.gz`, whichever exists (plain first: it needs no decompression)."""
    return next((path for path in (folder / name, folder / f"{name}.gz") if path.is_file()), None)


def find_idx_files(folder: Path) -> dict[tuple[str, str], Path] | None:
    """The four idx files in `folder`, keyed like IDX_FILES, or None unless all four are there."""
    found = {key: idx_file(folder, name) for key, name in IDX_FILES.items()}
    return found if all(found.values()) else None


def search_dirs(root: Path) -> list[Path]:
    """The folders looked in, in order: the two layouts under `root`, then Debian's."""
    return [root / layout for layout in LAYOUTS] + [DEBIAN_DIR]


def download(root: Path) -> None:
    """torchvision's download of the idx files into `root`/FashionMNIST/raw/ (needs a network)."""
    from torchvision.datasets import FashionMNIST

    FashionMNIST(root=str(root), download=True)


def locate(root: Path) -> dict[tuple[str, str], Path]:
    """The four idx files: from the first search folder holding all of them, else downloaded by torchvision."""
    tried = search_dirs(root)
    for folder in tried:
        files = find_idx_files(folder)
        if files is not None:
            return files
    logger.warning("Fashion-MNIST is in none of %s; trying torchvision's download into %s",
                   [str(d) for d in tried], root / "FashionMNIST" / "raw")
    try:
        download(root)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises RuntimeError after all mirrors
        reason = " ".join(str(err).split())  # torchvision's message spans lines; the error is one line
    else:
        files = find_idx_files(root / "FashionMNIST" / "raw")
        if files is not None:
            return files
        reason = "it left no idx files"
    names = ", ".join(IDX_FILES.values())
    raise DatasetError(f"Fashion-MNIST idx files ({names}; .gz or not) not found in {[str(d) for d in tried]}, and "
                       f"torchvision could not download them ({reason}). On Debian run `apt-get install "
                       f"dataset-fashion-mnist`; elsewhere place the four files under {root / 'fashion-mnist'}/ "
                       f"(or {root / 'FashionMNIST' / 'raw'}/) (see INSTALL.md, section '{SECTION}').")


def read_idx(path: Path, kind: str) -> np.ndarray:
    """An idx file of `kind` ('images' or 'labels'; gzip if it ends in .gz) as uint8 [N, rows, cols] or [N]."""
    magic, ndim = IDX_FORMATS[kind]
    fix = f"replace it with an intact copy (see INSTALL.md, section '{SECTION}')"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut-off gzip stream, EOFError
        raise DatasetError(f"cannot read {path}: {err}; {fix}.") from err
    header = 4 * (1 + ndim)  # big-endian uint32 magic, then one uint32 size per dimension
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: {len(raw)} bytes, less than its {header}-byte idx header; {fix}.")
    found, *shape = np.frombuffer(raw, dtype=">u4", count=1 + ndim).tolist()
    if found != magic:
        raise DatasetError(f"{path} has idx magic number {found}, not {magic} ({kind}); it is corrupt or another "
                           f"file; {fix}.")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetError(f"{path} has {len(raw)} bytes, but its header (shape {shape}) says {expected}; it is "
                           f"truncated or corrupt; {fix}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_part(files: dict[tuple[str, str], Path], part: str) -> tuple[np.ndarray, np.ndarray]:
    """One official part ('train' or 't10k') as images [N, 28, 28] uint8 and labels [N] int64."""
    images, labels = read_idx(files[part, "images"], "images"), read_idx(files[part, "labels"], "labels")
    if len(images) != len(labels):
        raise DatasetError(f"{files[part, 'images']} holds {len(images)} images but {files[part, 'labels']} "
                           f"{len(labels)} labels; the files do not belong together (see INSTALL.md, section "
                           f"'{SECTION}').")
    if labels.size and labels.max() >= len(FASHION_CLASSES):
        raise DatasetError(f"{files[part, 'labels']} has label {labels.max()}; Fashion-MNIST has "
                           f"{len(FASHION_CLASSES)} classes (see INSTALL.md, section '{SECTION}').")
    return images, labels.astype(np.int64)


def load_fashion_mnist(root: Path, split: str) -> LabeledImages:
    """Fashion-MNIST split `split` as 32x32 RGB images: train/val/pool from the official training set, test official."""
    files = locate(Path(root))
    part = SPLIT_PARTS[split]
    images, labels = read_part(files, part)
    logger.info("Fashion-MNIST %s part read from %s", part, files[part, "images"].parent)
    if split == "test":
        chosen = np.arange(len(labels))
    else:
        chosen = per_class_split_indices(labels, FASHION_SPLIT_SIZES, split, num_classes=len(FASHION_CLASSES),
                                         seed=FASHION_SEED, source=str(files[part, "labels"]))
    # Stems number images within their official part, so train/val/pool stems never collide.
    samples = [Sample(grey_to_rgb(images[i], FASHION_SIZE), int(labels[i]), f"fashion_{part}_{i:05d}")
               for i in chosen]
    return LabeledImages(samples, list(FASHION_CLASSES), name="fashion-mnist")
