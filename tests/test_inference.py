"""Tests for distdiff.models.inference: one batched loop over a dataset."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distdiff.models.inference import dataset_outputs


def test_outputs_keep_the_datasets_order_across_batches_and_restore_the_mode():
    images = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1) * torch.ones(7, 1, 2, 2)
    dataset = TensorDataset(images, torch.zeros(7))
    model = nn.Sequential(nn.Flatten(), nn.Dropout(p=0.9))  # dropout would scramble values in train mode
    model.train()
    (flat,) = dataset_outputs(model, dataset, batch_size=3, device="cpu")
    assert torch.equal(flat, images.flatten(1)) and model.training
    total, first = dataset_outputs(model, dataset, batch_size=2, device="cpu",
                                   fn=lambda m, x: (m(x).sum(dim=1), m(x)[:, 0].long()))
    assert total.tolist() == [4.0 * i for i in range(7)] and first.dtype == torch.long and first.tolist() == list(range(7))
    with pytest.raises(ValueError, match="empty dataset"):
        dataset_outputs(model, TensorDataset(images[:0], torch.zeros(0)), batch_size=2, device="cpu")
