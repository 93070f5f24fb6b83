"""Image transforms: the evaluation transform, the paper's training recipe and the `--augment` table.

The paper's training recipe (Resize 256, RandomRotation 15, RandomCrop 224, flip;
docs/METHOD.md#defaults) is written for 224-pixel images and scaled here to any image size S
(each dataset's S and flip default are in its distdiff.data.registry entry). Every `--augment`
option adds to it: image level ones (AutoAugment, RandAugment, AugMix, RandomErasing, GridMask)
act per image in the dataset transform, batch level ones (MixUp, CutMix) act on a whole batch in the training loop and
produce soft labels. `batch_transform` always returns [B, C] probability targets so the loss
is the same soft-target cross entropy for every option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torchvision.transforms import v2

RESIZE_RATIO = 256 / 224  # the paper's Resize 256 then RandomCrop 224 (docs/METHOD.md#defaults)
ROTATION_DEGREES = 15  # the paper's RandomRotation 15


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    # v2.ToImage + ToDtype(scale=True) is ToTensor: uint8 [0,255] HWC -> float [0,1] CHW.
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """PIL image -> normalised [3, S, S] tensor: Resize((S, S)), ToTensor, Normalize."""
    return v2.Compose([v2.Resize((image_size, image_size)), *_to_normalized_tensor(mean, std)])


class GridMask(nn.Module):
    """GridMask (Chen et al. 2020): zero a regular grid of squares on a normalised [C, H, W] image.

    A grid unit of side d (drawn from `d_range` times the image side) keeps a band of width
    ceil(ratio * d) and drops the remaining square, at a random offset; applied with probability p.
    Defaults are the paper's ImageNet setting (d in [96, 224] at 224 px, ratio 0.6, p 0.8), without
    its grid rotation.
    """

    def __init__(self, *, d_range: tuple[float, float] = (96 / 224, 1.0), ratio: float = 0.6, p: float = 0.8):
        super().__init__()
        self.d_range, self.ratio, self.p = d_range, ratio, p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        height, width = image.shape[-2:]
        side = min(height, width)
        d_low = max(2, round(self.d_range[0] * side))
        d = int(torch.randint(d_low, max(d_low, round(self.d_range[1] * side)) + 1, ()))
        drop = max(1, d - math.ceil(self.ratio * d))
        dy, dx = (int(v) for v in torch.randint(0, d, (2,)))
        rows = (torch.arange(height) + dy) % d < drop
        cols = (torch.arange(width) + dx) % d < drop
        keep = ~(rows[:, None] & cols[None, :])
        return image * keep.to(image.dtype)


@dataclass(frozen=True)
class Augment:
    """One `--augment` option: extra PIL ops, extra ops on the normalised tensor, a batch op."""

    image_ops: Callable[[], list] = field(default=lambda: [])
    tensor_ops: Callable[[], list] = field(default=lambda: [])
    batch_op: Callable[[int], Callable] | None = None  # num_classes -> v2 batch transform


# The paper's transformation baselines (docs/METHOD.md#defaults); each op uses torchvision's
# defaults (GridMask: its paper's).
AUGMENTS: dict[str, Augment] = {
    "default": Augment(),
    "autoaugment": Augment(image_ops=lambda: [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]),
    "randaugment": Augment(image_ops=lambda: [v2.RandAugment()]),
    "augmix": Augment(image_ops=lambda: [v2.AugMix()]),
    "randomerasing": Augment(tensor_ops=lambda: [v2.RandomErasing()]),
    "gridmask": Augment(tensor_ops=lambda: [GridMask()]),
    "mixup": Augment(batch_op=lambda num_classes: v2.MixUp(alpha=1.0, num_classes=num_classes)),
    "cutmix": Augment(batch_op=lambda num_classes: v2.CutMix(alpha=1.0, num_classes=num_classes)),
}


def _augment(name: str) -> Augment:
    if name not in AUGMENTS:
        raise ValueError(f"unknown --augment '{name}'; choose one of {sorted(AUGMENTS)}.")
    return AUGMENTS[name]


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], *, flip: bool = True,
                    augment: str = "default") -> v2.Compose:
    """PIL image -> augmented normalised [3, S, S] tensor: the paper's recipe scaled to S, plus `augment`."""
    spec = _augment(augment)
    ops = [v2.Resize(round(image_size * RESIZE_RATIO)), v2.RandomRotation(ROTATION_DEGREES),
           v2.RandomCrop(image_size)]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    ops += spec.image_ops()
    ops += _to_normalized_tensor(mean, std)
    ops += spec.tensor_ops()
    return v2.Compose(ops)


def batch_transform(augment: str, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor],
                                                                  tuple[torch.Tensor, torch.Tensor]]:
    """(images [B,3,H,W], labels [B]) -> (images, targets [B, C] probabilities); one-hot unless MixUp/CutMix."""
    spec = _augment(augment)
    mixer = spec.batch_op(num_classes) if spec.batch_op is not None else None

    def apply(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mixer is not None:
            images, targets = mixer(images, labels)
            return images, targets.float()
        return images, nn.functional.one_hot(labels, num_classes).float()

    return apply
