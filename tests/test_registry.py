"""Tests for distdiff.data.registry: a dataset is one entry, and every consumer reads that entry."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import expand
from distdiff.jobs import expand_config
from distdiff.data import registry
from distdiff.data.datasets import DatasetError, LabeledImages, Sample
from distdiff.training.experiment import RunConfig, image_settings
from distdiff.data.registry import DatasetSpec, load_dataset


def toy_loader(root: Path, split: str) -> LabeledImages:
    return LabeledImages([Sample(str(root / split / "a.png"), 0, "a"), Sample(str(root / "b.png"), 1, "b")],
                         ["red fox", "owl"], name="toy")


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """A dataset added as one registry entry, with a local SD folder as its default model."""
    (tmp_path / "toy-sd").mkdir()
    spec = DatasetSpec(toy_loader, prompt="a drawing of a {}.", image_size=48, flip=False,
                       sd_model=str(tmp_path / "toy-sd"), guide_arch="resnet18")
    monkeypatch.setitem(registry.DATASETS, "toy", spec)
    return spec


def test_new_dataset_is_one_entry_read_by_loading_training_and_expansion(toy, tmp_path, monkeypatch):
    train = load_dataset("toy", "train", root=tmp_path)
    assert train.prompt(0) == "a drawing of a red fox." and train.samples[0].source == str(tmp_path / "train" / "a.png")
    flags = RunConfig(dataset="toy", arch="smallcnn", lr=0.1, pretrained=False)
    assert image_settings(flags) == (48, False)
    assert image_settings(replace(flags, image_size=64, flip=True)) == (64, True)
    monkeypatch.chdir(tmp_path)
    job = expand_config.resolve(expand.parse_config(["-d", "toy", "--guidance", "none"]))
    assert job.model == toy.sd_model and job.guide_arch == "resnet18"
    assert job.guide_checkpoint == str(Path("checkpoint/toy/resnet18_unpretrained_lr0.1/seed1/model_best.pth.tar"))


def test_imagefolder_gets_the_paper_defaults(tmp_path):
    spec = registry.dataset_spec(f"imagefolder:{tmp_path}")
    assert (spec.prompt, spec.image_size, spec.flip, spec.guide_arch) == ("a photo of a {}.", 224, True, "resnet50")
    assert spec.sd_model == registry.DEFAULT_SD_MODEL
    with pytest.raises(DatasetError, match="missing folder"):
        spec.loader(Path("unused"), "train")


def test_unknown_dataset_and_split_list_the_choices():
    with pytest.raises(DatasetError, match=r"unknown dataset 'digit'; choose one of \['caltech-101'.*imagefolder:PATH"):
        load_dataset("digit", "train")
    with pytest.raises(DatasetError, match=r"unknown split 'training'; choose one of \('train'"):
        load_dataset("digits", "training")


def test_the_datasets_module_does_not_import_the_registry():
    # data/datasets.py is the base the dataset loaders build on; the registry sits above both, so no import cycle.
    code = "import sys, distdiff.data.datasets; print(sorted(m for m in sys.modules if m.startswith('distdiff.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    # utils/images.py: a leaf (PIL, numpy only); errors.py: the UserError base, a leaf; the rest are package inits
    assert out.strip() == ("['distdiff.data', 'distdiff.data.datasets', 'distdiff.errors', 'distdiff.utils', "
                           "'distdiff.utils.images']")


def test_dataset_expansion_defaults_fill_unset_flags_only(monkeypatch, tmp_path):
    """PathMNIST's paper settings (strength 0.2, M 10) come from its entry; an explicit flag wins; others keep 0.5 / 20."""
    guide = tmp_path / "model_best.pth.tar"
    guide.touch()  # resolve only checks that the guide exists

    def strength_and_m(*flags):
        job = expand_config.resolve(expand.parse_config([*flags, "--guide_checkpoint", str(guide)]))
        return job.sampling.strength, job.guidance.guidance_step

    assert strength_and_m("-d", "pathmnist") == (0.2, 10)
    assert strength_and_m("-d", "pathmnist", "--strength", "0.35") == (0.35, 10)
    monkeypatch.setitem(registry.DATASETS, "toy", DatasetSpec(toy_loader, expand_defaults={"guidance_step": 15}))
    assert strength_and_m("-d", "toy") == (0.5, 15)
    assert strength_and_m("-d", "digits") == (0.5, 20)
    assert registry.dataset_spec("pathmnist").prompt.format("debris") == "a colon pathological image of debris."
