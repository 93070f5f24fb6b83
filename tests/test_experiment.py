import argparse

import pytest

from distdiff.data.datasets import LabeledImages, Sample
from distdiff.training.experiment import (RunConfig, _drop_synthetic_of, guide_checkpoint, parse_gpu, parse_pretrained,
                                          run_dir, run_name)


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
