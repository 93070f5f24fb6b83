"""Label fidelity: does a classifier trained on real images see the prompted class in generated ones?

The judge is an RBF-SVM on grayscale pixels (scikit-learn), independent of the project's own
classifiers, so it can score images made with or without a guide. `generator_label_fidelity` scores
class-prompted txt2img images and img2img expansions made by the project's pipeline
(distdiff/pipelines/distdiff_img2img.py), unguided.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.svm import SVC

from distdiff.data.datasets import per_class_orders
from distdiff.pipelines.distdiff_img2img import DistDiffImg2ImgPipeline
from distdiff.pipelines.sampling import image_seed, image_to_tensor, make_generators

# Pool images per class a dataset's judge is fit on (absent: the whole pool). An RBF-SVM on
# Fashion-MNIST's 59,800 pool images would take hours to fit; 1000 per class take about a minute.
JUDGE_PER_CLASS = {"fashion-mnist": 1000}


class PixelJudge:
    """An RBF-SVM on grayscale pixels: a quick classifier independent of the project's own models."""

    def __init__(self, dataset, *, size: int = 32, c: float = 10.0, max_per_class: int | None = None, seed: int = 0):
        self.size = size
        if max_per_class is not None:  # an RBF-SVM's fit grows ~quadratically: 59,800 Fashion-MNIST images take hours
            dataset = dataset.subset(per_class_subset(dataset.labels, max_per_class=max_per_class, seed=seed))
        self.num_train = len(dataset)
        self.model = SVC(C=c, gamma="scale").fit(self.features(_dataset_array(dataset)), dataset.labels)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Images [N, H, W, 3] (uint8, or float in [0, 1]) -> [N, size*size] grayscale in [0, 1]."""
        if images.dtype != np.uint8:
            images = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
        gray = [np.asarray(Image.fromarray(x).convert("L").resize((self.size, self.size), Image.BICUBIC))
                for x in images]
        return np.stack(gray).reshape(len(images), -1).astype(np.float32) / 255.0

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted labels [N] of images [N, H, W, 3]."""
        return self.model.predict(self.features(images))

    def accuracy(self, images: np.ndarray, labels) -> float:
        """Fraction of images [N, H, W, 3] predicted as `labels` [N]."""
        return float(np.mean(self.predict(images) == np.asarray(labels)))


def per_class_subset(labels, *, max_per_class: int, seed: int = 0) -> list[int]:
    """Sorted indices of at most `max_per_class` items of each label, drawn without replacement with `seed`."""
    chosen = [order[:max_per_class] for order in per_class_orders(labels, np.unique(labels), seed)]
    return sorted(int(i) for i in np.concatenate(chosen))


def _dataset_array(dataset) -> np.ndarray:
    """All images of a LabeledImages dataset as [N, H, W, 3] uint8."""
    return np.stack([np.asarray(dataset.load_image(i)) for i in range(len(dataset))])


def generate(pipe, class_prompts: list[str], labels: list[int], *, images: list | None = None,
             strength: float = 0.5, num_inference_steps: int = 50, guidance_scale: float = 7.5, seed: int = 0,
             batch_size: int = 100) -> np.ndarray:
    """Images [N, H, W, 3] in [0, 1] of classes `labels` [N] by a DistDiffImg2ImgPipeline: txt2img, or img2img
    of PIL `images` [N]; image i has its own generator, seeded image_seed(seed, i), so batching does not matter."""
    outputs = []
    for start in range(0, len(labels), batch_size):
        index = range(start, min(start + batch_size, len(labels)))
        source = None
        if images is not None:
            source = torch.stack([image_to_tensor(images[i], resolution=pipe.default_resolution) for i in index])
            source = source / 2.0 + 0.5
        out = pipe(source, labels=[labels[i] for i in index], prompts=class_prompts,
                   generator=make_generators([image_seed(seed, i) for i in index]), strength=strength,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        outputs.append(out.images.permute(0, 2, 3, 1).numpy())
    return np.concatenate(outputs)


def generator_label_fidelity(path: str | Path, judge: PixelJudge, classes: list[str], prompt_template: str, *,
                   per_class: int, sources=None, strengths: tuple[float, ...] = (0.5,), num_inference_steps: int = 50,
                   guidance_scale: float = 7.5, seed: int = 0) -> dict:
    """Judge accuracy on class-prompted txt2img images (`per_class` per class; 0: none) and, given a `sources`
    dataset, on img2img expansions of each source image with its own class prompt at each of `strengths`.

    Defaults are the paper's: DDIM 50 steps, CFG 7.5, strength 0.5 (docs/METHOD.md#defaults).
    Returns accuracies and images; img2img ones as {strength: value}."""
    pipe = DistDiffImg2ImgPipeline.from_pretrained(str(path), precision="fp32")
    class_prompts = [prompt_template.format(name) for name in classes]
    result = {}
    if per_class > 0:
        labels = [label for label in range(len(classes)) for _ in range(per_class)]
        generated = generate(pipe, class_prompts, labels, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, seed=seed)
        result = {"txt2img": judge.accuracy(generated, labels), "txt2img_images": generated, "txt2img_labels": labels}
    if sources is not None:
        source_labels = sources.labels
        source_images = [sources.load_image(i) for i in range(len(sources))]
        expanded = {strength: generate(pipe, class_prompts, source_labels, images=source_images, strength=strength,
                                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                       seed=seed)
                    for strength in strengths}
        accuracy = {strength: judge.accuracy(images, source_labels) for strength, images in expanded.items()}
        result.update(img2img=accuracy, img2img_images=expanded, img2img_labels=source_labels)
    return result
