"""Tests for distdiff.data.shift: the shifted-digits datasets, transformations, unseen prompts."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

import expand
from distdiff.data import shift
from distdiff.data.registry import load_dataset
from distdiff.pipelines.sampling import encode_prompts
from distdiff.data.shift import SHIFTED_DIGITS, UNSEEN_CLASS_NAMES, shift_array

SPLITS = ("train", "val", "test", "pool")
IMAGE_SHIFTS = sorted(name for name, spec in SHIFTED_DIGITS.items() if spec.shift is not None)


def digits_images(split="train"):
    dataset = load_dataset("digits", split)
    return np.stack([s.source for s in dataset.samples])


@pytest.mark.parametrize("name", sorted(SHIFTED_DIGITS))
def test_splits_are_disjoint_seeded_and_the_digits_own(name):
    stems = {}
    for split in SPLITS:
        dataset = load_dataset(name, split)
        again = load_dataset(name, split)
        assert [s.stem for s in dataset.samples] == [s.stem for s in again.samples]
        assert all(np.array_equal(a.source, b.source) for a, b in zip(dataset.samples, again.samples))
        digits = load_dataset("digits", split)  # the same seeded partition as the unshifted digits
        assert [(s.stem, s.label) for s in dataset.samples] == [(s.stem, s.label) for s in digits.samples]
        stems[split] = {s.stem for s in dataset.samples}
    assert sum(len(v) for v in stems.values()) == len(set().union(*stems.values())) == 1797
    assert [len(stems[s]) for s in ("train", "val", "test")] == [100, 100, 600]


@pytest.mark.parametrize("name", IMAGE_SHIFTS)
def test_transformation_is_deterministic_and_not_the_identity(name):
    images = digits_images()
    first = shift_array(images, SHIFTED_DIGITS[name].shift)
    second = shift_array(images.copy(), SHIFTED_DIGITS[name].shift)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert first.tobytes() == second.tobytes()
    changed = np.mean(np.any(first != images, axis=(1, 2, 3)))
    assert changed == 1.0  # every image is changed
    shifted = load_dataset(name, "val")
    assert np.array_equal(shifted.samples[0].source, shift_array(digits_images("val")[:1], SHIFTED_DIGITS[name].shift)[0])


def test_thicken_and_thin_move_every_pixel_the_right_way():
    images = digits_images()
    thick, thin = shift_array(images, shift.thicken), shift_array(images, shift.thin)
    assert np.all(thick >= images) and np.all(thin <= images)
    assert thick.mean() > images.mean() + 10 and thin.mean() < images.mean() - 10


def test_shift_that_changes_the_size_is_refused():
    with pytest.raises(ValueError, match="must keep the image size"):
        shift_array(digits_images()[:2], lambda image: image.resize((16, 16)))


def test_unseen_dataset_prompts_name_no_digit():
    dataset = load_dataset("digits-shift-unseen", "train")
    prompts = [dataset.prompt(c) for c in range(10)]
    assert prompts == [f"a photo of a {name}." for name in UNSEEN_CLASS_NAMES]
    assert len(set(prompts)) == 10 and not any(ch.isdigit() for p in prompts for ch in p)


def test_unseen_prompt_reaches_the_unet(tmp_path, monkeypatch, tiny_sd, tiny_sd_dir):
    """The text embeddings the UNet receives are those of the unseen-name prompts, not the digits'."""
    seen = []
    forward = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        seen.append(encoder_hidden_states.detach().clone())
        return forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    argv = ["-d", "digits-shift-unseen", "--model", str(tiny_sd_dir), "--guidance", "none",
            "--guide_checkpoint", str(tmp_path / "none.pth.tar"), "--output_dir", str(tmp_path / "out"),
            "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "1", "--num_images_per_prompt", "1",
            "--steps", "4", "--guidance_scale", "1.0", "--feature_space", "none"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="guide checkpoint"):  # a named guide that does not exist is refused
        expand.main(expand.parse_args(argv))
    argv[argv.index("--guide_checkpoint"):argv.index("--guide_checkpoint") + 2] = []
    assert expand.main(expand.parse_args(argv))["written"] == 1
    unseen = encode_prompts(tiny_sd, [f"a photo of a {name}." for name in UNSEEN_CLASS_NAMES]).cond
    digits = encode_prompts(tiny_sd, [f"a photo of the digit {d}." for d in range(10)]).cond
    assert seen
    for embeds in seen:  # CFG scale 1: the UNet gets the conditional embeddings alone, [1, L, D]
        assert any(torch.allclose(embeds[0], e) for e in unseen)
        assert not any(torch.allclose(embeds[0], e) for e in digits)
