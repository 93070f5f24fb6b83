"""Tests for distdiff.data.datasets and distdiff.data.paper: digits splits, imagefolder, synthetic images, paper layouts."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distdiff.data import datasets as data
from distdiff.data.datasets import DatasetError, load_expanded
from distdiff.data.registry import dataset_has_split, load_dataset


def write_image(path: Path, value: int = 0, size: int = 8) -> Path:
    """A tiny solid-colour image; `value` tells files apart after loading."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Synthetic images (load_expanded)

CLASSES = ["cat", "dog", "fox"]


def test_load_expanded_labels_by_class_list_not_folder_order(tmp_path):
    write_image(tmp_path / "fox" / "a_expand_0.png", 30)
    write_image(tmp_path / "fox" / "a_expand_1.png", 31)
    write_image(tmp_path / "cat" / "a_expand_0.png", 10)  # same stem as in fox: allowed across classes
    (tmp_path / "manifest.jsonl").write_text('{"x": 1}\n')
    expanded = load_expanded(tmp_path, CLASSES, prompt_template="{} texture.")
    assert expanded.classes == CLASSES
    assert sorted((Path(s.source).parent.name, s.label) for s in expanded.samples) == [
        ("cat", 0), ("fox", 2), ("fox", 2)]
    assert expanded.class_counts() == [1, 0, 2]
    assert expanded.prompt(2) == "fox texture."
    image, label = expanded.with_transform(np.asarray)[expanded.labels.index(0)]
    assert label == 0 and image[0, 0, 0] == 10


def test_load_expanded_rejects_unknown_class_folder(tmp_path):
    write_image(tmp_path / "cat" / "a_expand_0.png")
    write_image(tmp_path / "wolf" / "a_expand_0.png")
    with pytest.raises(DatasetError, match=r"\['wolf'\].*classes are \['cat', 'dog', 'fox'\]"):
        load_expanded(tmp_path, CLASSES)


def test_load_expanded_missing_or_empty_dir(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_expanded(tmp_path / "nope", CLASSES)
    (tmp_path / "manifest.jsonl").write_text("")
    with pytest.raises(DatasetError, match="no class folders"):
        load_expanded(tmp_path, CLASSES)
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_expanded(tmp_path, CLASSES)


def test_load_expanded_rejects_non_image_file(tmp_path):
    write_image(tmp_path / "dog" / "a_expand_0.png")
    (tmp_path / "dog" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="not images.*notes.txt"):
        load_expanded(tmp_path, CLASSES)


# ---------------------------------------------------------------------------------------------
# digits

def test_digits_splits_have_documented_sizes_and_are_disjoint():
    sizes = {split: len(load_dataset("digits", split)) for split in data.SPLITS}
    assert sizes == {"train": 100, "val": 100, "test": 600, "pool": 1797 - 800}
    index_sets = [set(data.digits_split_indices(split).tolist()) for split in data.SPLITS]
    assert sum(len(s) for s in index_sets) == len(set().union(*index_sets)) == 1797
    train = load_dataset("digits", "train")
    assert train.class_counts() == [10] * 10
    assert train.load_image(0).size == (32, 32) and train.prompt(3) == "a photo of the digit 3."


def test_digits_is_deterministic():
    first, second = load_dataset("digits", "test"), load_dataset("digits", "test")
    assert [s.stem for s in first.samples] == [s.stem for s in second.samples]
    assert np.array_equal(np.asarray(first.load_image(5)), np.asarray(second.load_image(5)))


# ---------------------------------------------------------------------------------------------
# imagefolder:PATH

def make_imagefolder(root: Path) -> Path:
    for split, counts in {"train": {"ant": 3, "bee": 2}, "test": {"ant": 1, "bee": 2}}.items():
        for name, count in counts.items():
            for i in range(count):
                write_image(root / split / name / f"{split}_{name}_{i}.png", i)
    return root


def test_imagefolder_counts_classes_and_holdout(tmp_path):
    root = make_imagefolder(tmp_path / "insects")
    train = load_dataset(f"imagefolder:{root}", "train")
    test = load_dataset(f"imagefolder:{root}", "test")
    assert train.classes == test.classes == ["ant", "bee"]
    assert train.class_counts() == [3, 2] and test.class_counts() == [1, 2]
    assert data.dataset_slug(f"imagefolder:{root}/") == "insects"
    assert not dataset_has_split(f"imagefolder:{root}", "val")
    kept, held = data.holdout(train, 0.4, seed=0)
    assert kept.class_counts() == [2, 1] and held.class_counts() == [1, 1]
    assert not {s.stem for s in kept.samples} & {s.stem for s in held.samples}


def empty_train(root):
    for path in (root / "train").rglob("*.png"):
        path.unlink()


@pytest.mark.parametrize("breakage, message", [
    (empty_train, "no images"),
    (lambda root: write_image(root / "test" / "wasp" / "w.png"), r"class folders \['wasp'\]"),
    (lambda root: (root / "train" / "ant" / "readme.txt").write_text("x"), "not images"),
    (lambda root: write_image(root / "train" / "ant" / "train_ant_0.jpg"), "share the stem 'train_ant_0'"),
])
def test_imagefolder_errors(tmp_path, breakage, message):
    root = make_imagefolder(tmp_path / "insects")
    breakage(root)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"imagefolder:{root}", "test")


def test_imagefolder_without_train_folder(tmp_path):
    write_image(tmp_path / "test" / "ant" / "a.png")
    with pytest.raises(DatasetError, match=r"missing folder .*train.*section 'Your own dataset'"):
        load_dataset(f"imagefolder:{tmp_path}", "test")


# ---------------------------------------------------------------------------------------------
# Paper datasets, each on a tiny generated copy of its download layout.

def split_pair(name, root):
    train, test = load_dataset(name, "train", root=root), load_dataset(name, "test", root=root)
    for dataset in (train, test):
        assert len({s.stem for s in dataset.samples}) == len(dataset)  # stems unique across the split
    return train, test


def sources(dataset):
    return {s.source for s in dataset.samples}


def test_caltech101_drops_background_and_faces_easy_and_takes_30_per_class(tmp_path):
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    counts = {"BACKGROUND_Google": 3, "Faces": 31, "Faces_easy": 31, "airplanes": 31, "yin_yang": 33}
    for folder, count in counts.items():
        for i in range(count):
            write_image(base / folder / f"image_{i + 1:04d}.jpg", i)
    train, test = split_pair("caltech-101", tmp_path)
    assert train.classes == test.classes == ["face", "airplane", "yin yang"]
    assert train.class_counts() == [30, 30, 30] and test.class_counts() == [1, 1, 3]
    assert not sources(train) & sources(test)
    kept = {str(p) for p in base.rglob("*.jpg") if p.parent.name not in ("BACKGROUND_Google", "Faces_easy")}
    assert sources(train) | sources(test) == kept
    again = load_dataset("caltech-101", "train", root=tmp_path)
    assert [s.stem for s in again.samples] == [s.stem for s in train.samples]
    assert train.prompt(2) == "a photo of a yin yang."
    assert "Faces_image_0001" in {s.stem for s in train.samples + test.samples}


def test_caltech101_class_too_small_for_the_protocol(tmp_path):
    for i in range(30):
        write_image(tmp_path / "caltech101" / "101_ObjectCategories" / "ant" / f"image_{i:04d}.jpg")
    with pytest.raises(DatasetError, match="class 'ant' has 30 images; the protocol needs at least 31"):
        load_dataset("caltech-101", "train", root=tmp_path)


def test_cifar100_subset_samples_100_per_class_and_keeps_full_test(tmp_path):
    import pickle

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(labels):
        rows = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        rows[:, 0], rows[:, 1], rows[:, 2] = np.asarray(labels)[:, None, None] * 10, 1, 2
        return {"data": rows.reshape(len(labels), -1), "fine_labels": list(labels),
                "filenames": [f"f{i}.png" for i in range(len(labels))]}

    for name, content in {"meta": {"fine_label_names": ["apple", "maple_tree", "whale"]},
                          "train": batch(rng.permutation(np.repeat([0, 1, 2], 104)).tolist()),
                          "test": batch([2, 0, 1, 1, 0])}.items():
        with open(folder / name, "wb") as handle:
            pickle.dump(content, handle)
    train, test = split_pair("cifar100-subset", tmp_path)
    assert train.classes == ["apple", "maple tree", "whale"]
    assert len(train) == 300 and train.class_counts() == [100, 100, 100]
    assert test.labels == [2, 0, 1, 1, 0]
    for dataset in (train, test):
        image = np.asarray(dataset.load_image(3))
        assert image.shape == (32, 32, 3) and tuple(image[5, 7]) == (dataset.samples[3].label * 10, 1, 2)
    assert [s.stem for s in load_dataset("cifar100-subset", "train", root=tmp_path).samples] == [
        s.stem for s in train.samples]


def test_stanford_cars_reads_devkit_and_makes_names_folder_safe(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "stanford_cars"
    classes = np.array(["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"], dtype=object)
    annotation = np.dtype([("fname", object), ("class", np.uint8)])
    for split, mat, labels in (("train", base / "devkit" / "cars_train_annos.mat", [1, 2, 2]),
                               ("test", base / "cars_test_annos_withlabels.mat", [2, 1])):
        files = [f"{i + 1:05d}.jpg" for i in range(len(labels))]
        for name in files:
            write_image(base / f"cars_{split}" / name)
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(mat, {"annotations": np.array(list(zip(files, labels)), dtype=annotation)})
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": classes})
    train, test = split_pair("stanford_cars", tmp_path)
    assert train.classes == ["AM General Hummer SUV 2000", "Ram C-V Cargo Van Minivan 2012"]
    assert train.labels == [0, 1, 1] and test.labels == [1, 0]
    assert sources(train) == {str(base / "cars_train" / f"{i:05d}.jpg") for i in (1, 2, 3)}


def test_dtd_train_is_partition_1_train_plus_val_with_texture_prompt(tmp_path):
    base = tmp_path / "dtd" / "dtd"
    lists = {"train1": ["banded/banded_1.jpg", "dotted/dotted_1.jpg"], "val1": ["banded/banded_2.jpg"],
             "test1": ["dotted/dotted_2.jpg"]}
    (base / "labels").mkdir(parents=True)
    for name, entries in lists.items():
        (base / "labels" / f"{name}.txt").write_text("".join(f"{e}\n" for e in entries))
        for entry in entries:
            write_image(base / "images" / entry)
    write_image(base / "images" / "zigzagged" / "zigzagged_1.jpg")  # listed in another partition only
    train, test = split_pair("dtd", tmp_path)
    assert train.classes == test.classes == ["banded", "dotted", "zigzagged"]
    assert [s.stem for s in train.samples] == ["banded_1", "dotted_1", "banded_2"] and train.labels == [0, 1, 0]
    assert test.labels == [1]
    assert train.prompt(1) == "dotted texture."


def test_oxford_flowers_uses_official_setid_and_readable_names(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "flowers-102"
    for i in range(1, 7):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", i)
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 2, 1, 3, 2, 1]])})
    savemat(base / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3]]), "tstid": np.array([[4, 5, 6]])})
    train, test = split_pair("oxford_flowers", tmp_path)
    val = load_dataset("oxford_flowers", "val", root=tmp_path)
    assert len(train.classes) == 102 and train.classes[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert [(s.stem, s.label) for s in train.samples] == [("image_00001", 0), ("image_00002", 1)]
    assert val.labels == [0] and test.labels == [2, 1, 0]
    assert np.asarray(test.load_image(0))[0, 0, 0] == 4
    (base / "jpg" / "image_00005.jpg").unlink()
    with pytest.raises(DatasetError, match="1 images listed in the annotations are missing, e.g. .*image_00005.jpg"):
        load_dataset("oxford_flowers", "test", root=tmp_path)


def test_oxford_pets_trainval_is_train_and_breed_names_are_readable(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    splits = {"trainval": ["Abyssinian_1 1 1 1", "american_bulldog_1 2 2 1", "american_bulldog_2 2 2 1"],
              "test": ["american_bulldog_3 2 2 1", "Abyssinian_2 1 1 1"]}
    (base / "annotations").mkdir(parents=True)
    for split, lines in splits.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            write_image(base / "images" / f"{line.split()[0]}.jpg")
    train, test = split_pair("oxford_pets", tmp_path)
    assert train.classes == test.classes == ["Abyssinian", "American Bulldog"]
    assert train.labels == [0, 1, 1] and test.labels == [1, 0]
    assert [s.stem for s in test.samples] == ["american_bulldog_3", "Abyssinian_2"]


def test_imagenette_maps_wnids_to_names_and_val_is_test(tmp_path):
    base = tmp_path / "imagenette2"
    for split, files in {"train": ["n01440764/n01440764_1", "n01440764/n01440764_2", "n03888257/n03888257_1"],
                         "val": ["n03888257/ILSVRC2012_val_00000001"]}.items():
        for name in files:
            write_image(base / split / f"{name}.JPEG")
    train, test = split_pair("imagenette", tmp_path)
    assert train.classes == test.classes == ["tench", "parachute"]
    assert train.class_counts() == [2, 1] and test.labels == [1]
    assert test.prompt(1) == "a photo of a parachute."


def test_pathmnist_takes_100_per_class_and_full_test(tmp_path):
    rng = np.random.default_rng(0)
    train_labels = rng.permutation(np.repeat(np.arange(9), 101))[:, None]
    test_labels = np.array([[8], [0], [3]])
    images = {split: np.broadcast_to((labels * 20).astype(np.uint8)[:, :, None, None], (len(labels), 8, 8, 3)).copy()
              for split, labels in (("train", train_labels), ("test", test_labels))}
    np.savez(tmp_path / "pathmnist.npz", train_images=images["train"], train_labels=train_labels,
             test_images=images["test"], test_labels=test_labels)
    train, test = split_pair("pathmnist", tmp_path)
    assert len(train) == 900 and train.class_counts() == [100] * 9
    assert test.labels == [8, 0, 3] and test.classes[8] == "colorectal adenocarcinoma epithelium"
    assert all(np.asarray(train.load_image(i))[0, 0, 0] == train.samples[i].label * 20 for i in (0, 450, 899))


@pytest.mark.parametrize("name, section, expected", [
    ("caltech-101", "Caltech-101", "caltech101/101_ObjectCategories"),
    ("cifar100-subset", "CIFAR100-Subset", "cifar-100-python/meta"),
    ("stanford_cars", "Stanford Cars", "stanford_cars"),
    ("dtd", "DTD", "dtd/dtd/images"),
    ("oxford_flowers", "Oxford Flowers", "flowers-102/jpg"),
    ("oxford_pets", "Oxford Pets", "oxford-iiit-pet"),
    ("imagenette", "ImageNette", "imagenette2"),
    ("pathmnist", "PathMNIST", "pathmnist.npz"),
])
def test_missing_paper_dataset_names_layout_and_install_section(tmp_path, name, section, expected):
    with pytest.raises(DatasetError) as error:
        load_dataset(name, "train", root=tmp_path)
    message = str(error.value)
    assert f"missing {tmp_path / expected}" in message or f"missing folder {tmp_path / expected}" in message
    assert f"Expected layout: {tmp_path}/" in message
    assert f"(see INSTALL.md, section '{section}')" in message
    install = (Path(__file__).resolve().parents[1] / "INSTALL.md").read_text()
    assert f"\n## {section}\n" in install


def test_paper_dataset_without_val_split_points_to_val_fraction(tmp_path):
    with pytest.raises(DatasetError, match="dtd has no 'val' split.*--val_fraction"):
        load_dataset("dtd", "val", root=tmp_path)
    assert not dataset_has_split("caltech-101", "val", root=tmp_path)


def test_malformed_cars_annotations_are_a_dataset_error(tmp_path):
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    (base / "cars_train").mkdir()
    (base / "devkit" / "cars_train_annos.mat").write_text("not a mat file")
    with pytest.raises(DatasetError, match=r"cannot read StanfordCars.*section 'Stanford Cars'"):
        load_dataset("stanford_cars", "train", root=tmp_path)


def test_a_synthetic_name_is_made_and_read_back_by_one_rule():
    from distdiff.data.datasets import source_of_synthetic, synthetic_stem

    assert synthetic_stem("img_2_expand_1", 4) == "img_2_expand_1_expand_4"
    assert source_of_synthetic(synthetic_stem("img_2_expand_1", 4)) == ("img_2_expand_1", 4)
    assert source_of_synthetic("img_2") is None and source_of_synthetic("img_expand_x") is None
