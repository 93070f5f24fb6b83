"""Tests for distdiff.data.fashion_mnist: where the idx files are found, the seeded splits, and the errors.

Every test writes its own small idx files (25 training and 3 test images per class, each image a
flat grey level that encodes its label), so no test needs the real dataset, Debian's copy or a network.
"""

import gzip
import struct
from dataclasses import replace
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

import expand
from distdiff.jobs import expand as expand_run
from distdiff.jobs import expand_config
from distdiff.data import fashion_mnist
from distdiff.data import registry
from distdiff.data.datasets import DatasetError
from distdiff.runs.expansion import ExpansionError
from distdiff.data.registry import load_dataset

TRAIN_PER_CLASS, TEST_PER_CLASS = 25, 3


def pixel_value(label: int, offset: int = 0) -> int:
    """The grey level of every pixel of a fixture image of class `label` (offset tells fixture sets apart)."""
    return 20 * label + 5 + offset


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    """`array` (uint8) as an idx file: big-endian magic and sizes, then the bytes; gzipped if `path` ends in .gz."""
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_fixture(folder: Path, *, gz: bool = False, offset: int = 0, train_per_class: int = TRAIN_PER_CLASS
                  ) -> Path:
    """The four idx files in `folder`: labels in shuffled order, each image [28, 28] filled with pixel_value(label)."""
    rng = np.random.default_rng(123)
    for part, per_class in (("train", train_per_class), ("t10k", TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = np.stack([np.full((28, 28), pixel_value(label, offset), dtype=np.uint8) for label in labels])
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images, 2051)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels, 2049)
    return folder


@pytest.fixture(autouse=True)
def no_system_copy(monkeypatch, tmp_path):
    """Neither Debian's installed copy nor torchvision's download may feed a test unless the test says so."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-copy")

    def refuse(root):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://mirror/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(fashion_mnist, "download", refuse)


def stems(dataset) -> set[str]:
    return {s.stem for s in dataset.samples}


@pytest.mark.parametrize("layout", ["fashion-mnist", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_splits_have_their_sizes_are_disjoint_and_labels_match_pixels(tmp_path, layout, gz):
    write_fixture(tmp_path / "data" / layout, gz=gz)
    splits = {split: load_dataset("fashion-mnist", split, root=tmp_path / "data") for split in ("train", "val",
                                                                                               "test", "pool")}
    assert {name: d.class_counts() for name, d in splits.items()} == {
        "train": [10] * 10, "val": [10] * 10, "test": [TEST_PER_CLASS] * 10, "pool": [TRAIN_PER_CLASS - 20] * 10}
    train, val, pool = stems(splits["train"]), stems(splits["val"]), stems(splits["pool"])
    assert not (train & val or train & pool or val & pool)
    assert len(train | val | pool) == 10 * TRAIN_PER_CLASS  # together they are the whole official training set
    for dataset in splits.values():
        for sample in dataset.samples:
            assert sample.source.shape == (32, 32, 3)
            assert np.all(sample.source == pixel_value(sample.label))  # each image kept its own label


def test_classes_are_folder_safe_and_prompts_read_like_the_official_names(tmp_path):
    write_fixture(tmp_path / "fashion-mnist")
    train = load_dataset("fashion-mnist", "train", root=tmp_path)
    assert train.classes[0] == "T-shirt or top" and train.classes[1:] == list(fashion_mnist.OFFICIAL_CLASSES[1:])
    assert not any("/" in name for name in train.classes)  # class names are the synthetic images' folder names
    assert train.prompt(0) == "a photo of a T-shirt or top." and train.prompt(9) == "a photo of a Ankle boot."
    spec = registry.dataset_spec("fashion-mnist")
    assert (spec.image_size, spec.flip, spec.guide_arch) == (32, True, "smallcnn")


def test_splits_are_the_same_on_every_call_and_drawn_at_random(tmp_path):
    folder = write_fixture(tmp_path / "fashion-mnist")
    first, second = (fashion_mnist.load_fashion_mnist(tmp_path, "train") for _ in range(2))
    assert [s.stem for s in first.samples] == [s.stem for s in second.samples]
    assert all(np.array_equal(a.source, b.source) for a, b in zip(first.samples, second.samples))
    # Not simply each class's first 10 images in file order: the draw is a seeded shuffle.
    labels = fashion_mnist.read_idx(folder / "train-labels-idx1-ubyte", "labels")
    file_order = {f"fashion_train_{i:05d}" for c in range(10) for i in np.flatnonzero(labels == c)[:10]}
    assert stems(first) != file_order


def test_own_layout_comes_before_torchvisions_and_debians(tmp_path, monkeypatch):
    write_fixture(tmp_path / "FashionMNIST" / "raw", offset=1)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", write_fixture(tmp_path / "debian", gz=True, offset=2))
    sample = fashion_mnist.load_fashion_mnist(tmp_path, "test").samples[0]
    assert sample.source[0, 0, 0] == pixel_value(sample.label, 1)  # torchvision's layout beats Debian's
    write_fixture(tmp_path / "fashion-mnist", gz=True, offset=3)
    sample = fashion_mnist.load_fashion_mnist(tmp_path, "test").samples[0]
    assert sample.source[0, 0, 0] == pixel_value(sample.label, 3)  # ours beats both
    sample = fashion_mnist.load_fashion_mnist(tmp_path / "empty-root", "test").samples[0]
    assert sample.source[0, 0, 0] == pixel_value(sample.label, 2)  # Debian's when the data root has none


def test_incomplete_folder_is_skipped_and_download_fills_torchvisions_layout(tmp_path, monkeypatch):
    write_fixture(tmp_path / "fashion-mnist", offset=1)
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte").unlink()  # three of four files: not a source
    calls = []

    def fake_download(root):
        calls.append(root)
        write_fixture(root / "FashionMNIST" / "raw", gz=True, offset=4)

    monkeypatch.setattr(fashion_mnist, "download", fake_download)
    sample = fashion_mnist.load_fashion_mnist(tmp_path, "val").samples[0]
    assert calls == [tmp_path] and sample.source[0, 0, 0] == pixel_value(sample.label, 4)


@pytest.mark.parametrize("failure", [RuntimeError("Error downloading t10k:\nTried http://mirror/, got:\nHTTP 404\n"),
                                     URLError("[Errno -3] Temporary failure in name resolution")])
def test_missing_files_error_is_one_line_naming_the_fixes_and_paths_tried(tmp_path, monkeypatch, failure):
    def failing(root):
        raise failure

    monkeypatch.setattr(fashion_mnist, "download", failing)
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", "train", root=tmp_path / "data")
    message = str(caught.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "section 'Fashion-MNIST'" in message
    for tried in (tmp_path / "data" / "fashion-mnist", tmp_path / "data" / "FashionMNIST" / "raw",
                  tmp_path / "no-debian-copy"):
        assert str(tried) in message
    assert "could not download" in message


def test_other_download_errors_are_not_hidden(tmp_path, monkeypatch):
    def broken(root):
        raise TypeError("a bug, not a failed download")

    monkeypatch.setattr(fashion_mnist, "download", broken)
    with pytest.raises(TypeError, match="a bug"):
        fashion_mnist.load_fashion_mnist(tmp_path, "train")


def corrupt_magic(path: Path) -> None:
    write_idx(path, np.zeros(30, dtype=np.uint8), 2051)  # a labels file with the images' magic number


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:6])


def truncate_gzip(path: Path) -> None:
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes())[:-40])  # a cut-off download
    path.unlink()


def not_gzip(path: Path) -> None:
    path.with_name(path.name + ".gz").write_bytes(path.read_bytes())  # named .gz, but plain bytes
    path.unlink()


@pytest.mark.parametrize("damage, message", [(corrupt_magic, "magic number 2051, not 2049"),
                                             (truncate, "header .* says"),
                                             (truncate_header, "truncated: 6 bytes"),
                                             (truncate_gzip, "cannot read"),
                                             (not_gzip, "cannot read")])
def test_corrupt_idx_file_is_a_dataset_error_naming_the_file(tmp_path, damage, message):
    labels = write_fixture(tmp_path / "fashion-mnist") / "t10k-labels-idx1-ubyte"
    damage(labels)
    with pytest.raises(DatasetError, match=message) as caught:
        fashion_mnist.load_fashion_mnist(tmp_path, "test")
    assert str(labels) in str(caught.value) and "\n" not in str(caught.value)


def test_image_and_label_counts_must_agree(tmp_path):
    folder = write_fixture(tmp_path / "fashion-mnist")
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(29, dtype=np.uint8), 2049)
    with pytest.raises(DatasetError, match="30 images but .*t10k-labels-idx1-ubyte 29 labels"):
        fashion_mnist.load_fashion_mnist(tmp_path, "test")


def test_a_class_too_small_for_train_plus_val_is_an_error(tmp_path):
    write_fixture(tmp_path / "fashion-mnist", train_per_class=15)
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte: class 0 has 15 images.*at least 20"):
        fashion_mnist.load_fashion_mnist(tmp_path, "train")


def test_expand_without_the_default_model_stops_with_one_line_naming_it(tmp_path, monkeypatch):
    spec = registry.dataset_spec("fashion-mnist")
    assert Path(spec.sd_model).is_absolute() and Path(spec.sd_model).parts[-2:] == ("checkpoint", "tiny-sd-fashion")
    absent = tmp_path / "checkpoint" / "tiny-sd-fashion"
    monkeypatch.setitem(registry.DATASETS, "fashion-mnist", replace(spec, sd_model=str(absent)))
    job = expand_config.resolve(expand.parse_config(["-d", "fashion-mnist", "--guidance", "none"]))
    with pytest.raises(ExpansionError) as caught:  # the loader's check, the registry's remedy
        expand_run.load_model(job, "cpu")
    assert str(absent) in str(caught.value) and "--model" in str(caught.value) and "\n" not in str(caught.value)
    assert "train it with `python scripts/train_tiny_sd.py --dataset fashion-mnist`" in str(caught.value)
