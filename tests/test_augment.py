import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from distdiff.data.augment import AUGMENTS, GridMask, batch_transform, eval_transform, train_transform
from distdiff.models.classifiers import IMAGENET_MEAN, IMAGENET_STD


def _images(n, size=(40, 30)):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_every_option_adds_to_the_recipe():
    kinds = lambda t: [type(op) for op in t.transforms]  # noqa: E731
    recipe = kinds(train_transform(32, IMAGENET_MEAN, IMAGENET_STD))
    for name in sorted(set(AUGMENTS) - {"default"}):
        ops = kinds(train_transform(32, IMAGENET_MEAN, IMAGENET_STD, augment=name))
        extra = [op for op in ops if op not in recipe]
        # image/tensor options add ops to the recipe (keeping all of it); batch options add a batch op
        assert all(op in ops for op in recipe) and (len(extra) == 1) != (AUGMENTS[name].batch_op is not None), name


@pytest.mark.parametrize("augment", sorted(AUGMENTS))
def test_every_option_gives_images_of_size_s_and_probability_targets(augment):
    torch.manual_seed(0)
    transform = train_transform(32, IMAGENET_MEAN, IMAGENET_STD, augment=augment)
    images = torch.stack([transform(image) for image in _images(6)])
    labels = torch.arange(6)  # all different, so any mixing shows in the targets
    mixed, targets = batch_transform(augment, 10)(images, labels)
    assert images.shape == mixed.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    assert targets.shape == (6, 10) and targets.min() >= 0
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    if augment in ("mixup", "cutmix"):
        # each image is mixed with its neighbour in the batch, with one weight lam for the whole batch
        lam = targets[torch.arange(6), labels]
        torch.testing.assert_close(targets[torch.arange(6), labels.roll(1)], 1 - lam)
        assert 0 < lam[0] < 1 and torch.allclose(lam, lam[0])
    else:
        assert torch.equal(targets, one_hot) and torch.equal(mixed, images)


def test_eval_transform_resizes_to_a_square_and_normalises():
    mean_pixel = tuple(round(255 * m) for m in IMAGENET_MEAN)
    image = Image.new("RGB", (50, 20), mean_pixel)
    out = eval_transform(24, IMAGENET_MEAN, IMAGENET_STD)(image)
    assert out.shape == (3, 24, 24)
    assert out.abs().max() < 0.01  # the mean colour maps to 0
    white = eval_transform(24, IMAGENET_MEAN, IMAGENET_STD)(Image.new("RGB", (10, 10), (255, 255, 255)))
    torch.testing.assert_close(white[:, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))


def test_flip_is_switchable():
    kinds = lambda t: [type(op) for op in t.transforms]  # noqa: E731
    assert v2.RandomHorizontalFlip not in kinds(train_transform(32, IMAGENET_MEAN, IMAGENET_STD, flip=False))
    assert v2.RandomHorizontalFlip in kinds(train_transform(32, IMAGENET_MEAN, IMAGENET_STD, flip=True))


def test_recipe_is_scaled_to_the_image_size():
    # the paper's Resize 256 -> RandomCrop 224; at S=32 that is Resize 37 -> RandomCrop 32: a 32x32 image is
    # first enlarged, so the crop never covers its whole border; the output is always S x S.
    torch.manual_seed(0)
    transform = train_transform(64, IMAGENET_MEAN, IMAGENET_STD, flip=False)
    resize = next(op for op in transform.transforms if isinstance(op, v2.Resize))
    assert resize.size == [73]
    assert transform(_images(1, (300, 200))[0]).shape == (3, 64, 64)


def test_gridmask_drops_a_grid_of_squares():
    torch.manual_seed(0)
    image = torch.ones(3, 224, 224)
    dropped = [(GridMask(p=1.0)(image) == 0).float().mean().item() for _ in range(20)]
    # ratio 0.6 keeps 0.6 of each period: squares of side ~0.4 d drop about 0.4^2 = 16% of pixels
    assert 0.08 < np.mean(dropped) < 0.25 and min(dropped) > 0
    assert torch.equal(GridMask(p=0.0)(image), image)
    masked = GridMask(p=1.0)(image)
    assert torch.equal(masked[0], masked[1])  # the same mask on every channel


def test_unknown_option_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown --augment 'mixupp'; choose one of \['augmix'"):
        train_transform(32, IMAGENET_MEAN, IMAGENET_STD, augment="mixupp")
