"""Tests for distdiff.method.prototypes: features, class and group prototypes, and their file format."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from distdiff.data.datasets import LabeledImages, Sample
from distdiff.method.prototypes import (Prototypes, class_prototypes, compute_prototypes, extract_features,
                                        group_prototypes)


class TinyGuide(torch.nn.Module):
    """A stand-in guide: flattened image -> linear features -> head."""

    def __init__(self, in_dim=3 * 4 * 4, dim=5):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(in_dim, dim)
        self.head = torch.nn.Linear(dim, 2)
        self.num_features = dim

    def features(self, x):
        return self.body(x.flatten(1)) * 7.0  # scaled so normalisation is visible

    def forward(self, x):
        return self.head(self.features(x))


def planted_blobs(sizes_per_class, dim=16, noise=0.02, seed=0):
    """Unit-norm points around well-separated unit centres: (features, labels, centres [C, K, D])."""
    rng = np.random.default_rng(seed)
    n_centres = sum(len(s) for s in sizes_per_class)
    # Orthogonal centres are as far apart as unit vectors get without being opposite.
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:, :n_centres].T
    features, labels, centres, i = [], [], [], 0
    for label, sizes in enumerate(sizes_per_class):
        class_centres = []
        for size in sizes:
            points = basis[i] + noise * rng.normal(size=(size, dim))
            features.append(points / np.linalg.norm(points, axis=1, keepdims=True))
            labels += [label] * size
            class_centres.append(basis[i])
            i += 1
        centres.append(class_centres)
    return (torch.tensor(np.concatenate(features), dtype=torch.float32), torch.tensor(labels),
            torch.tensor(np.array(centres), dtype=torch.float32))


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_group_prototypes_recover_planted_blobs_largest_first(method):
    # Distinct blob sizes per class, deliberately not listed largest-first, fix the expected order.
    sizes = [[6, 14, 10], [12, 5, 8]]
    features, labels, centres = planted_blobs(sizes)
    groups, mask = group_prototypes(features, labels, num_classes=2, k=3, method=method, seed=0)
    assert groups.shape == (2, 3, 16) and mask.shape == (2, 3) and mask.dtype == torch.bool
    assert mask.all()
    for c, class_sizes in enumerate(sizes):
        expected = centres[c][np.argsort(class_sizes)[::-1].copy()]
        cosine = (groups[c] * expected).sum(dim=1)
        assert torch.all(cosine > 0.99), cosine
    assert torch.allclose(groups.norm(dim=2), torch.ones(2, 3), atol=1e-5)


def test_class_prototypes_match_hand_computation():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    protos = class_prototypes(features, labels, num_classes=2)
    s = 2 ** -0.5
    assert torch.allclose(protos, torch.tensor([[s, s], [1.0, 0.0]]), atol=1e-6)


def test_class_without_images_is_an_error():
    with pytest.raises(ValueError, match=r"classes \[1\] have no images"):
        class_prototypes(torch.eye(2), torch.tensor([0, 0]), num_classes=2)


def test_small_class_gets_one_group_per_image():
    features, labels, _ = planted_blobs([[5, 5, 5]], dim=8)
    small = F.normalize(torch.tensor([[1.0, 2, 0, 0, 0, 0, 0, 0], [0.0, 0, 3, 0, 0, 0, 0, 1]]), dim=1)
    features = torch.cat([features, small])
    labels = torch.cat([labels, torch.tensor([1, 1])])
    groups, mask = group_prototypes(features, labels, num_classes=2, k=3)
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    assert torch.allclose(groups[1, :2], small, atol=1e-6)
    assert torch.equal(groups[1, 2], torch.zeros(8))


def test_kmeans_is_deterministic_for_a_seed_and_unknown_method_errors():
    features, labels, _ = planted_blobs([[7, 7, 7, 7]], dim=8, noise=0.3)
    first = group_prototypes(features, labels, num_classes=1, k=3, seed=3)[0]
    second = group_prototypes(features, labels, num_classes=1, k=3, seed=3)[0]
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="unknown grouping method 'spectral'"):
        group_prototypes(features, labels, num_classes=1, method="spectral")


def test_save_load_round_trip_is_atomic_and_exact(tmp_path):
    features, labels, _ = planted_blobs([[4, 4, 4], [3, 3, 2]], dim=8)
    groups, mask = group_prototypes(features, labels, num_classes=2)
    metadata = {"dataset": "caltech-101", "guide_checkpoint": "checkpoint/x/model_best.pth.tar", "k": 3,
                "method": "kmeans", "seed": 0, "feature_dim": 8}
    protos = Prototypes(class_prototypes(features, labels, num_classes=2), groups, mask, metadata)
    path = tmp_path / "out" / "prototypes.pt"
    protos.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["prototypes.pt"]  # no temp file left behind
    loaded = Prototypes.load(path)
    assert torch.equal(loaded.classes, protos.classes)
    assert torch.equal(loaded.groups, protos.groups)
    assert torch.equal(loaded.group_mask, protos.group_mask) and loaded.group_mask.dtype == torch.bool
    assert loaded.metadata == metadata
    assert (loaded.num_classes, loaded.feature_dim) == (2, 8)


def test_save_rejects_unserialisable_metadata_and_load_rejects_other_files(tmp_path):
    protos = Prototypes(torch.eye(2), torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.bool),
                        {"guide": tmp_path})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        protos.save(tmp_path / "p.pt")
    assert not list(tmp_path.iterdir())
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a prototype file"):
        Prototypes.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        Prototypes.load(tmp_path / "missing.pt")


def tiny_images(n_per_class=(3, 4)):
    """A LabeledImages of 4x4 random RGB arrays turned into tensors."""
    rng = np.random.default_rng(0)
    samples = [Sample(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), label, f"img{label}_{i}")
               for label, n in enumerate(n_per_class) for i in range(n)]
    return LabeledImages(samples, ["a", "b"], transform=TF.to_tensor, name="tiny")


def test_extract_features_unit_norm_matches_model_and_restores_mode():
    model = TinyGuide()
    dataset = tiny_images()
    features = extract_features(model, dataset, batch_size=3, device="cpu")
    assert features.shape == (7, 5) and features.dtype == torch.float32 and features.device.type == "cpu"
    assert not features.requires_grad
    assert torch.allclose(features.norm(dim=1), torch.ones(7), atol=1e-6)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert torch.allclose(features, F.normalize(model.features(images), dim=1).detach(), atol=1e-6)
    assert model.training  # eval() only for the duration of the extraction


def test_compute_prototypes_combines_features_and_metadata():
    model = TinyGuide()
    dataset = tiny_images((3, 4))
    protos = compute_prototypes(model, dataset, k=3, method="agglomerative", seed=1, batch_size=4, device="cpu",
                                metadata={"guide_checkpoint": "g.pth.tar"})
    features = extract_features(model, dataset, batch_size=4, device="cpu")
    labels = torch.tensor(dataset.labels)
    assert torch.allclose(protos.classes, class_prototypes(features, labels, num_classes=2), atol=1e-6)
    assert protos.group_mask.tolist() == [[True, True, True], [True, True, True]]
    assert protos.groups.shape == (2, 3, 5)
    assert protos.metadata == {"dataset": "tiny", "class_names": ["a", "b"], "num_images": 7, "feature_dim": 5,
                               "k": 3, "method": "agglomerative", "seed": 1, "guide_checkpoint": "g.pth.tar"}
    with pytest.raises(ValueError, match=r"contradicts.*'k': \(2, 3\)"):
        compute_prototypes(model, dataset, k=3, device="cpu", metadata={"k": 2})
