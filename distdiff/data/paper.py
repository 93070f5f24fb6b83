"""The paper's datasets, read from their usual download layouts under `root` (default data/).

Each loader takes (root, split); distdiff.data.registry names them, one entry per dataset.
Splits are the paper's train/test (Flowers102 also has its official val); the scripts hold out
part of train for validation where a dataset has no val split. Class names are readable (they
become prompts and synthetic-image folder names) and stems are unique across the whole split.
INSTALL.md has one section per dataset, named in every error message here.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.io.matlab import MatReadError
from torchvision import datasets as tvd

from distdiff.data.datasets import DatasetError, LabeledImages, Sample, per_class_orders, scan_class_folders

SUBSET_SEED = 0  # fixes which images form the paper's per-class training subsets


def _at(layout: str, root: Path) -> str:
    """A layout description with the actual data root filled in."""
    return layout.replace("<root>", str(root))


def _missing(path: Path, *, layout: str, section: str) -> DatasetError:
    return DatasetError(f"missing {path}. Expected layout: {layout} (see INSTALL.md, section '{section}').")


def _require(paths: list[Path], *, layout: str, section: str) -> None:
    for path in paths:
        if not path.exists():
            raise _missing(path, layout=layout, section=section)


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise DatasetError(f"{name} has no '{split}' split (it has {list(splits)}); for validation pass "
                           f"--val_fraction to hold out part of train.")


def _folder_safe(names: list[str]) -> list[str]:
    """Class names usable as folder names ('Ram C/V Cargo Van' -> 'Ram C-V Cargo Van'), still unique."""
    safe = [name.replace("/", "-").strip() for name in names]
    if len(set(safe)) != len(safe):
        raise DatasetError(f"class names {names} are not unique once made folder-safe.")
    return safe


def _torchvision(cls: type, root: Path, *, layout: str, section: str, **kwargs):
    """A torchvision dataset object (download=False), its errors turned into a DatasetError."""
    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError, IndexError, MatReadError) as err:
        raise DatasetError(f"cannot read {cls.__name__} under {root}: {err}. Expected layout: {layout} "
                           f"(see INSTALL.md, section '{section}').") from err


def _listed(samples: list[Sample], *, layout: str, section: str) -> list[Sample]:
    """`samples` read from an annotation list, after checking that every listed image file exists."""
    absent = [s.source for s in samples if not Path(s.source).is_file()]
    if absent:
        raise DatasetError(f"{len(absent)} images listed in the annotations are missing, e.g. {absent[0]}; the "
                           f"download looks incomplete. Expected layout: {layout} "
                           f"(see INSTALL.md, section '{section}').")
    return samples


def _per_class_subset(labels: np.ndarray, classes: list[str], per_class: int, *, name: str, section: str,
                      min_rest: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices of `per_class` random samples of each class (seed SUBSET_SEED), and of the rest."""
    chosen, rest = [], []
    for class_name, members in zip(classes, per_class_orders(labels, range(len(classes)), SUBSET_SEED)):
        if len(members) < per_class + min_rest:
            raise DatasetError(f"{name}: class '{class_name}' has {len(members)} images; the protocol needs at least "
                               f"{per_class + min_rest} ({per_class} for training). The download looks incomplete "
                               f"(see INSTALL.md, section '{section}').")
        chosen.append(members[:per_class])
        rest.append(members[per_class:])
    return np.sort(np.concatenate(chosen)), np.sort(np.concatenate(rest))


def _array_split(images: np.ndarray, labels: np.ndarray, classes: list[str], split: str, *, per_class: int,
                 name: str, stem: str, section: str) -> LabeledImages:
    """In-memory images [N,H,W,3]: the whole test split, or `per_class` seeded train images per class."""
    chosen = (np.arange(len(labels)) if split == "test" else
              _per_class_subset(labels, classes, per_class, name=name, section=section)[0])
    samples = [Sample(np.ascontiguousarray(images[i]), int(labels[i]), f"{stem}_{split}_{i:05d}") for i in chosen]
    return LabeledImages(samples, classes, name=name)


# torchvision datasets keep their file lists in private attributes (_samples, _image_files,
# _images); requirements.txt pins the torchvision version these loaders are tested with.

# ---------------------------------------------------------------------------------------------
# Caltech-101. torchvision's Caltech101 infers file names by counting each folder's entries
# (image_0001..image_N), so a stray or missing file silently shifts paths; we scan the folders.

CALTECH_SECTION = "Caltech-101"
CALTECH_LAYOUT = "<root>/caltech101/101_ObjectCategories/<category>/image_XXXX.jpg (102 folders)"
# The paper's 100 classes: drop the clutter class, and Faces_easy, which holds the same photos as
# Faces cropped tighter (the usual few-shot protocol, e.g. CoOp's Caltech101 split).
CALTECH_DROPPED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_RENAMED = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
CALTECH_TRAIN_PER_CLASS = 30  # paper: 3000 train images, 30 per class (docs/METHOD.md#datasets)


def load_caltech101(root: Path, split: str) -> LabeledImages:
    """Caltech-101, 100 classes: 30 random training images per class, the rest test."""
    _check_split("caltech-101", split, ("train", "test"))
    layout = _at(CALTECH_LAYOUT, root)
    samples, folders = scan_class_folders(root / "caltech101" / "101_ObjectCategories", layout=layout,
                                          section=CALTECH_SECTION)
    kept = [f for f in folders if f not in CALTECH_DROPPED]
    relabel = {folders.index(f): new for new, f in enumerate(kept)}
    samples = [Sample(s.source, relabel[s.label], f"{kept[relabel[s.label]]}_{s.stem}")
               for s in samples if s.label in relabel]
    labels = np.array([s.label for s in samples])
    # Every class keeps at least one test image (the smallest real class has 31 images).
    train, test = _per_class_subset(labels, kept, CALTECH_TRAIN_PER_CLASS, name="caltech-101",
                                    section=CALTECH_SECTION, min_rest=1)
    chosen = train if split == "train" else test
    classes = [CALTECH_RENAMED.get(f, f).replace("_", " ") for f in kept]
    return LabeledImages([samples[i] for i in chosen], classes, name="caltech-101")


# ---------------------------------------------------------------------------------------------
# CIFAR100-Subset. torchvision's CIFAR100 checks every file's md5, which rejects test fixtures
# and re-hashes 160 MB on each load; the pickled arrays are read directly instead.

CIFAR_SECTION = "CIFAR100-Subset"
CIFAR_LAYOUT = "<root>/cifar-100-python/{train,test,meta} (the python version of CIFAR-100, unpacked)"
CIFAR_TRAIN_PER_CLASS = 100  # paper: 10000 train images, 100 per class (docs/METHOD.md#datasets)


def _unpickle(path: Path, layout: str) -> dict:
    _require([path], layout=layout, section=CIFAR_SECTION)
    with open(path, "rb") as handle:
        try:
            return pickle.load(handle, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise DatasetError(f"{path} is not a CIFAR-100 python pickle ({err}); re-download it "
                               f"(see INSTALL.md, section '{CIFAR_SECTION}').") from err


def load_cifar100_subset(root: Path, split: str) -> LabeledImages:
    """CIFAR-100 with 100 random training images per class; the full 10000-image test set."""
    _check_split("cifar100-subset", split, ("train", "test"))
    layout = _at(CIFAR_LAYOUT, root)
    folder = root / "cifar-100-python"
    meta, batch = _unpickle(folder / "meta", layout), _unpickle(folder / split, layout)
    try:
        classes = [name.replace("_", " ") for name in meta["fine_label_names"]]
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as err:
        raise DatasetError(f"{folder} is malformed ({err!r}); expected layout {layout} "
                           f"(see INSTALL.md, section '{CIFAR_SECTION}').") from err
    return _array_split(images, labels, classes, split, per_class=CIFAR_TRAIN_PER_CLASS, name="cifar100-subset",
                        stem="cifar100", section=CIFAR_SECTION)


# ---------------------------------------------------------------------------------------------
# Stanford Cars, through torchvision (it reads the devkit .mat files; no checksums).

CARS_SECTION = "Stanford Cars"
CARS_LAYOUT = ("<root>/stanford_cars/{cars_train/, cars_test/, devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
               "cars_test_annos_withlabels.mat}")


def load_stanford_cars(root: Path, split: str) -> LabeledImages:
    """Stanford Cars, 196 classes, official 8144/8041 train/test."""
    _check_split("stanford_cars", split, ("train", "test"))
    layout = _at(CARS_LAYOUT, root)
    _require([root / "stanford_cars"], layout=layout, section=CARS_SECTION)
    cars = _torchvision(tvd.StanfordCars, root, layout=layout, section=CARS_SECTION, split=split)
    samples = _listed([Sample(path, int(label), Path(path).stem) for path, label in cars._samples],
                      layout=layout, section=CARS_SECTION)
    return LabeledImages(samples, _folder_safe(list(cars.classes)), name="stanford_cars")


# ---------------------------------------------------------------------------------------------
# DTD, through torchvision (no checksums). torchvision derives classes from each split's list,
# so labels are taken from the images/ folders to stay aligned across splits.

DTD_SECTION = "DTD"
DTD_LAYOUT = "<root>/dtd/dtd/images/<texture>/<image>.jpg and <root>/dtd/dtd/labels/{train,val,test}1.txt"
# The paper's DTD split, 3760 train / 1880 test, is partition 1's train+val / test lists
# (docs/METHOD.md#datasets).
DTD_SPLIT_LISTS = {"train": ("train", "val"), "test": ("test",)}


def load_dtd(root: Path, split: str) -> LabeledImages:
    """Describable Textures, 47 classes, partition 1 (train = train1 + val1, test = test1)."""
    _check_split("dtd", split, tuple(DTD_SPLIT_LISTS))
    layout = _at(DTD_LAYOUT, root)
    images_dir = root / "dtd" / "dtd" / "images"
    _require([images_dir], layout=layout, section=DTD_SECTION)
    classes = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    samples = []
    for part in DTD_SPLIT_LISTS[split]:
        dtd = _torchvision(tvd.DTD, root, layout=layout, section=DTD_SECTION, split=part, partition=1)
        for path in dtd._image_files:
            if path.parent.name not in classes:
                raise DatasetError(f"{dtd._meta_folder / f'{part}1.txt'} lists {path}, whose class folder does not "
                                   f"exist (see INSTALL.md, section '{DTD_SECTION}').")
            samples.append(Sample(str(path), classes.index(path.parent.name), path.stem))
    return LabeledImages(_listed(samples, layout=layout, section=DTD_SECTION), classes, name="dtd")


# ---------------------------------------------------------------------------------------------
# Oxford Flowers 102. torchvision's Flowers102 md5-checks its .mat files, which rejects test
# fixtures; the .mat files are read directly (with the same scipy reader) and only its class
# name list is reused.

FLOWERS_SECTION = "Oxford Flowers"
FLOWERS_LAYOUT = "<root>/flowers-102/{jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat}"
FLOWERS_SET_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}  # the official 1020/1020/6149 split


def load_oxford_flowers(root: Path, split: str) -> LabeledImages:
    """Oxford Flowers 102 with its official train/val/test split."""
    _check_split("oxford_flowers", split, tuple(FLOWERS_SET_KEYS))
    layout = _at(FLOWERS_LAYOUT, root)
    folder = root / "flowers-102"
    _require([folder / "jpg", folder / "imagelabels.mat", folder / "setid.mat"], layout=layout,
             section=FLOWERS_SECTION)
    try:
        image_ids = np.atleast_1d(loadmat(folder / "setid.mat", squeeze_me=True)[FLOWERS_SET_KEYS[split]])
        labels = np.atleast_1d(loadmat(folder / "imagelabels.mat", squeeze_me=True)["labels"]) - 1
    except (KeyError, ValueError, OSError, MatReadError) as err:
        raise DatasetError(f"{folder} is malformed ({err!r}); expected layout {layout} "
                           f"(see INSTALL.md, section '{FLOWERS_SECTION}').") from err
    samples = []
    for image_id in image_ids:
        path = folder / "jpg" / f"image_{int(image_id):05d}.jpg"
        samples.append(Sample(str(path), int(labels[int(image_id) - 1]), path.stem))
    return LabeledImages(_listed(samples, layout=layout, section=FLOWERS_SECTION), list(tvd.Flowers102.classes),
                         name="oxford_flowers")


# ---------------------------------------------------------------------------------------------
# Oxford-IIIT Pet, through torchvision (no checksums): trainval is our train split.

PETS_SECTION = "Oxford Pets"
PETS_LAYOUT = "<root>/oxford-iiit-pet/{images/<Breed>_<n>.jpg, annotations/trainval.txt, annotations/test.txt}"
PETS_SPLITS = {"train": "trainval", "test": "test"}


def load_oxford_pets(root: Path, split: str) -> LabeledImages:
    """Oxford-IIIT Pet, 37 breeds, official trainval/test."""
    _check_split("oxford_pets", split, tuple(PETS_SPLITS))
    layout = _at(PETS_LAYOUT, root)
    _require([root / "oxford-iiit-pet"], layout=layout, section=PETS_SECTION)
    # Classes come from trainval so they are the same whichever split is loaded.
    classes = _torchvision(tvd.OxfordIIITPet, root, layout=layout, section=PETS_SECTION, split="trainval").classes
    pets = _torchvision(tvd.OxfordIIITPet, root, layout=layout, section=PETS_SECTION, split=PETS_SPLITS[split])
    samples = _listed([Sample(str(path), int(label), path.stem) for path, label in zip(pets._images, pets._labels)],
                      layout=layout, section=PETS_SECTION)
    return LabeledImages(samples, list(classes), name="oxford_pets")


# ---------------------------------------------------------------------------------------------
# ImageNette, through torchvision (it maps WordNet ids to readable names); val is our test split.

IMAGENETTE_SECTION = "ImageNette"
IMAGENETTE_LAYOUT = "<root>/imagenette2/{train,val}/<wnid>/<image>.JPEG (or <root>/imagenette2-320/, imagenette2-160/)"
IMAGENETTE_SIZES = {"imagenette2": "full", "imagenette2-320": "320px", "imagenette2-160": "160px"}  # first found wins
IMAGENETTE_SPLITS = {"train": "train", "test": "val"}  # paper: 9469 train / 3925 test (docs/METHOD.md#datasets)


def load_imagenette(root: Path, split: str) -> LabeledImages:
    """ImageNette, 10 ImageNet classes, official train / val (as test)."""
    _check_split("imagenette", split, tuple(IMAGENETTE_SPLITS))
    layout = _at(IMAGENETTE_LAYOUT, root)
    folders = [folder for folder in IMAGENETTE_SIZES if (root / folder).is_dir()]
    if not folders:
        raise _missing(root / "imagenette2", layout=layout, section=IMAGENETTE_SECTION)
    _require([root / folders[0] / "train"], layout=layout, section=IMAGENETTE_SECTION)

    def read(part: str):
        return _torchvision(tvd.Imagenette, root, layout=layout, section=IMAGENETTE_SECTION,
                            split=part, size=IMAGENETTE_SIZES[folders[0]])

    train = read("train")  # its WordNet ids fix the labels for both splits
    nette = train if split == "train" else read(IMAGENETTE_SPLITS[split])
    unknown = sorted(set(nette.wnids) - set(train.wnids))
    if unknown:
        raise DatasetError(f"ImageNette val/ has class folders {unknown} that train/ lacks "
                           f"(see INSTALL.md, section '{IMAGENETTE_SECTION}').")
    samples = [Sample(path, train.wnids.index(Path(path).parent.name), Path(path).stem) for path, _ in nette._samples]
    classes = [names[0] for names in train.classes]
    return LabeledImages(samples, classes, name="imagenette")


# ---------------------------------------------------------------------------------------------
# PathMNIST (MedMNIST), from the .npz file the medmnist package downloads.

PATHMNIST_SECTION = "PathMNIST"
PATHMNIST_LAYOUT = "<root>/pathmnist.npz (MedMNIST v2; arrays train_images, train_labels, test_images, test_labels)"
PATHMNIST_TRAIN_PER_CLASS = 100  # paper: 900 train images, 100 per class (docs/METHOD.md#datasets)
PATHMNIST_CLASSES = ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                     "normal colon mucosa", "cancer-associated stroma",
                     "colorectal adenocarcinoma epithelium"]  # medmnist.INFO["pathmnist"]["label"]


def load_pathmnist(root: Path, split: str) -> LabeledImages:
    """PathMNIST, 9 tissue classes: 100 random training images per class; the full 7180-image test set."""
    _check_split("pathmnist", split, ("train", "test"))
    layout = _at(PATHMNIST_LAYOUT, root)
    path = root / "pathmnist.npz"
    _require([path], layout=layout, section=PATHMNIST_SECTION)
    try:
        with np.load(path) as arrays:
            labels = arrays[f"{split}_labels"].reshape(-1).astype(np.int64)
            images = arrays[f"{split}_images"]
    except (KeyError, ValueError, OSError) as err:
        raise DatasetError(f"{path} is malformed ({err!r}); expected {layout} "
                           f"(see INSTALL.md, section '{PATHMNIST_SECTION}').") from err
    return _array_split(images, labels, list(PATHMNIST_CLASSES), split, per_class=PATHMNIST_TRAIN_PER_CLASS,
                        name="pathmnist", stem="pathmnist", section=PATHMNIST_SECTION)

