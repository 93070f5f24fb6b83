"""Shifted digits: few-shot targets that the shipped digits generator does not already produce.

The embedded tiny SD (checkpoint/tiny-sd-digits) was trained on the digits pool split, so its
img2img outputs of plain digits already sit on the target distribution. The paper's premise is
a gap between the generator and the target: Stable Diffusion, trained on web images, does not
know a Stanford Cars model name or a PathMNIST tissue's look. Two gaps are built here from the
same digits splits (train / val / test / pool, disjoint, seeded as in distdiff.data.datasets):

- appearance: every image of every split goes through one fixed, deterministic image
  transformation the generator never saw (thicker strokes, rotation, blur, inversion, tint);
- semantics: the class names are replaced by tokens the generator's text encoder never saw in
  training, so the class prompt carries no class information.

All functions here are pure: the same input gives the same bytes on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from distdiff.data.datasets import DatasetError, LabeledImages, Sample, load_digits_split

ImageShift = Callable[[Image.Image], Image.Image]


def thicken(image: Image.Image, *, size: int = 3) -> Image.Image:
    """Thicker strokes: grey-level dilation with a size x size max filter (odd size >= 3)."""
    return image.filter(ImageFilter.MaxFilter(size))


def thin(image: Image.Image, *, size: int = 3) -> Image.Image:
    """Thinner strokes: grey-level erosion with a size x size min filter (odd size >= 3)."""
    return image.filter(ImageFilter.MinFilter(size))


def rotate(image: Image.Image, *, degrees: float = 30.0) -> Image.Image:
    """Counter-clockwise rotation about the centre, bilinear, black corners (the digits' background)."""
    return image.rotate(degrees, resample=Image.BILINEAR, fillcolor=(0, 0, 0))


def blur(image: Image.Image, *, radius: float = 1.5) -> Image.Image:
    """Gaussian blur of the given radius in pixels."""
    return image.filter(ImageFilter.GaussianBlur(radius))


def invert(image: Image.Image) -> Image.Image:
    """Dark strokes on a white background."""
    return ImageOps.invert(image.convert("RGB"))


def tint(image: Image.Image, *, background: tuple[int, int, int] = (20, 40, 120),
         stroke: tuple[int, int, int] = (255, 200, 0)) -> Image.Image:
    """Colour: the grey level maps linearly from `background` (0) to `stroke` (255)."""
    return ImageOps.colorize(image.convert("L"), black=background, white=stroke).convert("RGB")


def shift_array(images: np.ndarray, shift: ImageShift) -> np.ndarray:
    """Apply `shift` to every image of [N, H, W, 3] uint8: [N, H, W, 3] uint8 (size kept)."""
    out = [np.asarray(shift(Image.fromarray(x).convert("RGB")).convert("RGB"), dtype=np.uint8) for x in images]
    shapes = {x.shape for x in out}
    if shapes != {images.shape[1:]}:
        raise ValueError(f"a shift must keep the image size {images.shape[1:]}, got {sorted(shapes)}.")
    return np.stack(out)


# Class names for the semantic gap: short letter strings that appear in none of the prompts the
# digits generator was trained on ("a photo of the digit 0." ... "9."), so each class prompt is
# a different but meaningless text condition, as a fine-grained class name is for SD.
UNSEEN_CLASS_NAMES = ("qux", "vyk", "zeb", "jof", "wix", "kyv", "xuj", "fez", "yoq", "vuz")
UNSEEN_PROMPT = "a photo of a {}."  # the paper's generic template


@dataclass(frozen=True)
class ShiftSpec:
    """One shifted-digits dataset: an image shift (or None) and the class names / prompt it uses."""

    shift: ImageShift | None = None
    class_names: tuple[str, ...] | None = None  # None: the digits' own "0".."9"
    prompt_template: str | None = None  # None: the digits' own template (the registry applies it)
    description: str = ""


def load_shifted_digits(spec: ShiftSpec, name: str, root, split: str) -> LabeledImages:
    """A digits split with `spec`'s shift and class names; same samples, stems and labels as `digits` (root unused)."""
    base = load_digits_split(root, split)
    if spec.shift is None:
        images = [s.source for s in base.samples]
    else:
        images = list(shift_array(np.stack([s.source for s in base.samples]), spec.shift))
    classes = list(spec.class_names) if spec.class_names is not None else base.classes
    if len(classes) != len(base.classes):
        raise DatasetError(f"{name}: {len(classes)} class names for {len(base.classes)} classes.")
    samples = [Sample(image, s.label, s.stem) for image, s in zip(images, base.samples)]
    return LabeledImages(samples, classes, name=name)


SHIFTED_DIGITS: dict[str, ShiftSpec] = {
    "digits-shift-thick": ShiftSpec(partial(thicken, size=3), description="3x3 dilation"),
    "digits-shift-thin": ShiftSpec(partial(thin, size=3), description="3x3 erosion"),
    "digits-shift-rotate": ShiftSpec(partial(rotate, degrees=30.0), description="30 degree rotation"),
    "digits-shift-blur": ShiftSpec(partial(blur, radius=1.5), description="Gaussian blur, radius 1.5 px"),
    "digits-shift-invert": ShiftSpec(invert, description="dark strokes on white"),
    "digits-shift-tint": ShiftSpec(tint, description="yellow strokes on dark blue"),
    "digits-shift-unseen": ShiftSpec(class_names=UNSEEN_CLASS_NAMES, prompt_template=UNSEEN_PROMPT,
                                     description="class names the generator never saw"),
}
