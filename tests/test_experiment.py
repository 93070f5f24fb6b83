import argparse
import dataclasses

import numpy as np
import pytest
import torch

from distdiff.data.datasets import DatasetError, LabeledImages, Sample
from distdiff.data.real_or_synthetic import RealOrSynthetic
from distdiff.training.experiment import (RunConfig, _drop_synthetic_of, guide_checkpoint, load_run_data, parse_gpu,
                                          parse_pretrained, run_dir, run_name, run_training)
from distdiff.training.loop import TrainingError
from distdiff.utils.settings import SettingError


def test_run_folders_follow_the_checkpoint_layout():
    assert run_name("resnet50", False, 0.1, "default") == "resnet50_unpretrained_lr0.1"
    assert run_name("resnet18", True, 1e-3, "cutmix") == "resnet18_pretrained_lr0.001_cutmix"
    args = RunConfig(output_root="checkpoint", dataset="imagefolder:/data/my pets/", arch="smallcnn",
                     pretrained=False, lr=0.01, augment="default", seed=3, exp="distdiff_5x")
    assert str(run_dir(args)) == "checkpoint/my_pets/distdiff_5x/smallcnn_unpretrained_lr0.01/seed3"


def test_default_guide_is_seed_1_of_the_from_scratch_lr_0_1_run():
    args = RunConfig(output_root="ckpt", dataset="imagefolder:/data/my pets", arch="resnet50",
                     pretrained=False, lr=0.1, augment="default", seed=1)
    assert guide_checkpoint("imagefolder:/data/my pets", "resnet50", output_root="ckpt") == \
        run_dir(args) / "model_best.pth.tar"
    expected = "checkpoint/digits/smallcnn_unpretrained_lr0.1/seed1/model_best.pth.tar"
    assert str(guide_checkpoint("digits", "smallcnn")) == expected


def test_strict_positional_parsers():
    assert parse_pretrained("True") is True and parse_pretrained("False") is False
    for text in ("true", "1", "yes", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="PRETRAINED must be True or False"):
            parse_pretrained(text)
    assert parse_gpu("0,1") == "0,1"
    with pytest.raises(argparse.ArgumentTypeError, match="GPU must be a device index"):
        parse_gpu("cuda:0")


def test_synthetic_images_of_held_out_images_are_dropped():
    held = LabeledImages([Sample("a.png", 0, "img_1"), Sample("b.png", 1, "img_2")], ["x", "y"])
    names = [(0, "img_1_expand_0"), (0, "img_1_expand_1"), (1, "img_1_expand_0"), (1, "img_2_expand_3"),
             (0, "img_10_expand_0")]
    synthetic = LabeledImages([Sample(f"{s}.png", label, s) for label, s in names], ["x", "y"])
    kept = _drop_synthetic_of(synthetic, held)
    # same stem in another class is another source image; img_10 is not img_1
    assert [(s.label, s.stem) for s in kept.samples] == [(1, "img_1_expand_0"), (0, "img_10_expand_0")]


# --synthetic_probability: DA-Fusion's sampling (distdiff/data/real_or_synthetic.py)

def _real_and_copies(copies_per_image):
    """Real images 0..N-1 of two classes (pixel value = index) and copies named <stem>_expand_<c> (value 100 + c)."""
    real = [Sample(np.full((4, 4, 3), i, np.uint8), i % 2, f"img_{i}") for i in range(len(copies_per_image))]
    synthetic = [Sample(np.full((4, 4, 3), 100 + c, np.uint8), i % 2, f"img_{i}_expand_{c}")
                 for i, n in enumerate(copies_per_image) for c in range(n)]
    return LabeledImages(real, ["x", "y"]), LabeledImages(synthetic, ["x", "y"])


def _picks(dataset, index, n, torch_seed=0):
    torch.manual_seed(torch_seed)
    return [dataset.pick(index) for _ in range(n)]


def test_synthetic_probability_0_keeps_real_images_and_1_always_uses_their_own_copies():
    real, synthetic = _real_and_copies([3, 0, 2])
    never = RealOrSynthetic(real, synthetic, probability=0.0, seed=1)
    always = RealOrSynthetic(real, synthetic, probability=1.0, seed=1)
    assert len(never) == len(always) == 3  # an epoch is the real images
    for index in range(3):
        assert {(d is real, i) for d, i in _picks(never, index, 50)} == {(True, index)}
    stems = [{synthetic.samples[i].stem for d, i in _picks(always, index, 200) if d is synthetic} for index in (0, 2)]
    assert stems == [{"img_0_expand_0", "img_0_expand_1", "img_0_expand_2"}, {"img_2_expand_0", "img_2_expand_1"}]
    assert {(d is real, i) for d, i in _picks(always, 1, 50)} == {(True, 1)}  # no copies: stays real
    image, label = RealOrSynthetic(real, synthetic, probability=1.0, seed=1, transform=lambda im: im.getpixel((0, 0)))[2]
    assert image[0] in (100, 101) and label == 0  # a copy's image, the label of its class


def test_synthetic_probability_draws_copies_at_that_rate_reproducibly():
    real, synthetic = _real_and_copies([3, 3])
    dataset = RealOrSynthetic(real, synthetic, probability=0.3, seed=7)
    picks = _picks(dataset, 0, 6000)
    # 6000 draws: the share of copies within 0.03 of 0.3 (binomial sd 0.006), each copy's share of them
    # within 0.04 of 1/3 (sd about 0.011).
    chosen = [synthetic.samples[i].stem for d, i in picks if d is synthetic]
    assert abs(len(chosen) / len(picks) - 0.3) < 0.03
    for c in range(3):
        assert abs(chosen.count(f"img_0_expand_{c}") / len(chosen) - 1 / 3) < 0.04
    assert _picks(dataset, 0, 100) == picks[:100]  # same run seed and torch seed: the same draws
    assert _picks(dataset, 0, 100, torch_seed=1) != picks[:100]  # torch reseeded (next epoch, a worker): new draws
    other_run = RealOrSynthetic(real, synthetic, probability=0.3, seed=8)
    assert _picks(other_run, 0, 100) != picks[:100]


def test_synthetic_probability_refuses_bad_values_and_copies_of_unknown_images():
    real, synthetic = _real_and_copies([1, 1])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(SettingError, match=r"--synthetic_probability must be"):
            RealOrSynthetic(real, synthetic, probability=bad, seed=1)
    stray = LabeledImages(synthetic.samples + [Sample(np.zeros((4, 4, 3), np.uint8), 0, "img_9_expand_0")], ["x", "y"])
    with pytest.raises(DatasetError, match="made from 'img_9' of class 'x', which is not in the training images"):
        RealOrSynthetic(real, stray, probability=0.5, seed=1)
    swapped = LabeledImages([Sample(np.zeros((4, 4, 3), np.uint8), 1, "img_0_expand_0")], ["x", "y"])
    with pytest.raises(DatasetError, match="made from 'img_0' of class 'y'"):  # img_0 is of class x
        RealOrSynthetic(real, swapped, probability=0.5, seed=1)
    unnamed = LabeledImages([Sample("/data/x/photo.png", 0, "photo")], ["x", "y"])
    with pytest.raises(DatasetError, match=r"photo.png is not named <source stem>_expand_<i>"):
        RealOrSynthetic(real, unnamed, probability=0.5, seed=1)


def test_synthetic_probability_needs_an_expansion():
    config = RunConfig(dataset="digits", arch="smallcnn", lr=0.1, pretrained=False, synthetic_probability=0.5)
    with pytest.raises(TrainingError, match="needs an expansion"):
        run_training(config)
    with pytest.raises(TrainingError, match="needs synthetic images"):
        load_run_data(config, 32, False, None)
    with pytest.raises(SettingError, match=r"--synthetic_probability must be in \[0, 1\], got 2"):
        run_training(dataclasses.replace(config, exp="x", synthetic_probability=2.0))
