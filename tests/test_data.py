"""Tests for distdiff.data: the digits splits, imagefolder, synthetic images and paper layouts."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distdiff import data
from distdiff.data import DatasetError, load_dataset, load_expanded


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
