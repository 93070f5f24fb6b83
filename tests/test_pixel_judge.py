"""Tests for distdiff.report.pixel_judge: the RBF-SVM label judge and label fidelity through diffusers' pipelines."""

import numpy as np

from distdiff.report.pixel_judge import PixelJudge, generator_label_fidelity, per_class_subset
from distdiff.data.registry import load_dataset


def digits_array(dataset):
    return np.stack([np.asarray(dataset.load_image(i)) for i in range(len(dataset))])


def test_judge_trained_on_the_pool_recognises_held_out_digits(judge):
    test = load_dataset("digits", "test")
    images = digits_array(test)
    # 0.985 measured on the 600 test digits; a judge that ignored the pixels would score about 0.1
    assert judge.accuracy(images, test.labels) >= 0.95
    # float images in [0, 1] (what the pipelines return) are judged exactly like their uint8 originals
    np.testing.assert_array_equal(judge.predict(images.astype(np.float32) / 255), judge.predict(images))


def test_label_fidelity_scores_each_prompted_class_and_each_source_at_each_strength(judge, tiny_sd_dir):
    sources = load_dataset("digits", "train").subset(range(0, 100, 25))
    result = generator_label_fidelity(tiny_sd_dir, judge, sources.classes, sources.prompt_template, per_class=1,
                            sources=sources, strengths=(0.5, 0.9), num_inference_steps=4, seed=0)
    assert result["txt2img_labels"] == list(range(10)) and result["img2img_labels"] == sources.labels
    assert result["txt2img_images"].shape == (10, 32, 32, 3)
    assert sorted(result["img2img"]) == sorted(result["img2img_images"]) == [0.5, 0.9]
    assert result["txt2img"] == judge.accuracy(result["txt2img_images"], result["txt2img_labels"])
    for strength, images in result["img2img_images"].items():
        assert images.shape == (4, 32, 32, 3)
        assert result["img2img"][strength] == judge.accuracy(images, sources.labels)
    # more noise moves the expansion further from its source (4 steps: 2 at strength 0.5, 3 at 0.9)
    sources_pixels = digits_array(sources).astype(np.float32) / 255
    distance = {s: np.abs(images - sources_pixels).mean() for s, images in result["img2img_images"].items()}
    assert distance[0.9] > distance[0.5]


def test_per_class_subset_caps_each_class_and_is_seeded():
    labels = [0] * 5 + [1] * 2 + [2] * 9
    chosen = per_class_subset(labels, max_per_class=3, seed=0)
    assert [labels[i] for i in chosen].count(0) == 3 and [labels[i] for i in chosen].count(1) == 2
    assert [labels[i] for i in chosen].count(2) == 3 and chosen == sorted(set(chosen))
    assert chosen == per_class_subset(labels, max_per_class=3, seed=0)
    assert any(per_class_subset(labels, max_per_class=3, seed=s) != chosen for s in range(1, 5))


def test_judge_fit_on_a_capped_pool_subset():
    pool = load_dataset("digits", "pool")
    judge = PixelJudge(pool, max_per_class=20)
    assert judge.num_train == 200 and len(judge.model.support_) <= 200
    test = load_dataset("digits", "test")
    assert judge.accuracy(digits_array(test), test.labels) > 0.8  # still a judge, from 20 images per class
