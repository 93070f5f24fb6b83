"""Tests for distdiff.pixel_judge: the RBF-SVM label judge and label fidelity through diffusers' pipelines."""

import numpy as np

from distdiff.pixel_judge import label_fidelity
from distdiff.registry import load_dataset


def digits_array(dataset):
    return np.stack([np.asarray(dataset.load_image(i)) for i in range(len(dataset))])


def test_judge_trained_on_the_pool_recognises_held_out_digits(judge):
    test = load_dataset("digits", "test")
    images = digits_array(test)
    # 0.985 measured on the 600 test digits; a judge that ignored the pixels would score about 0.1
    assert judge.accuracy(images, test.labels) >= 0.95
    # float images in [0, 1] (what the pipelines return) are judged exactly like their uint8 originals
    np.testing.assert_array_equal(judge.predict(images.astype(np.float32) / 255), judge.predict(images))


def test_label_fidelity_scores_each_prompted_class_and_each_source(judge, tiny_sd_dir):
    sources = load_dataset("digits", "train").subset(range(0, 100, 25))
    result = label_fidelity(tiny_sd_dir, judge, sources.classes, sources.prompt_template, per_class=1,
                            sources=sources, num_inference_steps=2, seed=0)
    assert result["txt2img_labels"] == list(range(10)) and result["img2img_labels"] == sources.labels
    assert result["txt2img_images"].shape == (10, 32, 32, 3) and result["img2img_images"].shape == (4, 32, 32, 3)
    assert result["txt2img"] == judge.accuracy(result["txt2img_images"], result["txt2img_labels"])
    assert result["img2img"] == judge.accuracy(result["img2img_images"], sources.labels)
