"""Running a model over a dataset in batches: the one loop behind guide features, predictions and feature spaces."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


def dataset_outputs(model: nn.Module, dataset, *, batch_size: int, device: str | torch.device,
                    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]] | None = None,
                    desc: str = "features", num_workers: int = 0) -> tuple[torch.Tensor, ...]:
    """`fn(model, images)` (default: `model(images)`) over `dataset` (images [B, C, H, W] from its transform), in
    order, without gradients and in eval mode (the model's mode is restored): each output [N, ...] on the CPU."""
    if len(dataset) == 0:
        raise ValueError("cannot run a model over an empty dataset.")
    fn = fn or (lambda m, images: m(images))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for images, _ in tqdm(loader, desc=desc, leave=False):
                out = fn(model, images.to(device))
                chunks.append(tuple(o.cpu() for o in (out if isinstance(out, tuple) else (out,))))
    finally:
        model.train(was_training)
    return tuple(torch.cat(parts) for parts in zip(*chunks))
