"""Shared, session-scoped fixtures: a saved tiny SD folder, a tiny guide, its prototypes and checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

# The test models are tiny: intra-op threads buy nothing, and on a busy shared CPU spinning
# worker threads made one tiny-UNet call ~75x slower (1.9 s vs 25 ms) in our measurements.
# Set before torch loads; the scripts' thread default (distdiff.cli) honours it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F
from torch import nn
import pytest
from safetensors.torch import load_file

from distdiff.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, build_classifier, save_checkpoint
from distdiff.method.observers import EnergyRecorder
from distdiff.pipelines.sampling import make_generators
from distdiff.method.prototypes import Prototypes
from distdiff.pipelines.distdiff_img2img import load_stable_diffusion
from distdiff.tiny_sd.model import save_tiny_sd

NUM_CLASSES = 10  # the digits
PINNED_GUIDE = Path(__file__).parent / "pinned" / "guide_smallcnn_seed0.safetensors"

torch.set_num_threads(1)
FEATURE_DIM = 16


class TinyGuide(nn.Module):
    """A guide with the Classifier interface's `features`: a strided conv, tanh, 2x2 pooling -> [B, 16]."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, FEATURE_DIM // 4, 3, stride=2, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 2).flatten(1)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _generate(sd, latent_params, labels, seeds, *, prompts, steps=50, guide=None, record_energy=True, **kwargs):
    """The pipeline called as expand.py calls it: posteriors [B,2C,h,w], one seed per image, and with a
    guide an EnergyRecorder (records in .records)."""
    observers = [EnergyRecorder(guide, labels)] if guide is not None and record_energy else []
    return sd(latent_params=latent_params, labels=labels, generator=make_generators(seeds), prompt_embeds=prompts,
              num_inference_steps=steps, guide=guide, observers=observers, **kwargs)


@pytest.fixture(scope="session")
def generate():
    """distdiff.pipelines.distdiff_img2img's pipeline as expand.py calls it (see _generate)."""
    return _generate


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A random tiny SD saved in diffusers' folder format (32 px images, 16x16x4 latents)."""
    return save_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_sd_dir, tmp_path_factory):
    """A random tiny transformers CLIPModel (32 px images) with the tiny SD's tokenizer, saved as a hub folder."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    out = tmp_path_factory.mktemp("models") / "tiny-clip"
    tokenizer = AutoTokenizer.from_pretrained(tiny_sd_dir / "tokenizer")
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Not OpenAI's statistics, so a test sees which ones were used.
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32, image_mean=[0.5, 0.4, 0.3],
                       image_std=[0.2, 0.25, 0.3]).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_dir):
    """The tiny SD loaded through the same code path as a hub model, fp32 on CPU."""
    return load_stable_diffusion(str(tiny_sd_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def tiny_guide():
    return TinyGuide(seed=0).eval()


@pytest.fixture(scope="session")
def tiny_prototypes():
    """Random unit prototypes for 10 classes, K=3; the last class has only 2 valid groups."""
    generator = torch.Generator().manual_seed(1)
    classes = F.normalize(torch.randn(NUM_CLASSES, FEATURE_DIM, generator=generator), dim=1)
    groups = F.normalize(torch.randn(NUM_CLASSES, 3, FEATURE_DIM, generator=generator), dim=2)
    mask = torch.ones(NUM_CLASSES, 3, dtype=torch.bool)
    mask[-1, -1] = False
    groups[-1, -1] = 0.0
    return Prototypes(classes, groups, mask, {"dataset": "test"})


@pytest.fixture(scope="session")
def judge():
    """The pixel RBF-SVM label judge trained on the real digits of the generator pool."""
    from distdiff.report.pixel_judge import PixelJudge
    from distdiff.data.registry import load_dataset

    return PixelJudge(load_dataset("digits", "pool"))


def save_digits_guide(path: Path, model: nn.Module) -> Path:
    """Write `model` as a digits guide checkpoint, the way train_original.py writes one."""
    info = {"arch": "smallcnn", "num_classes": NUM_CLASSES, "classes": [str(d) for d in range(NUM_CLASSES)],
            "image_size": 32, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "dataset": "digits"}
    save_checkpoint(path, model, info)
    return path


@pytest.fixture(scope="session")
def digits_guide_checkpoint(tmp_path_factory):
    """An untrained smallcnn guide checkpoint for digits, seeded (torch.manual_seed(0))."""
    torch.manual_seed(0)
    return save_digits_guide(tmp_path_factory.mktemp("guide") / "model_best.pth.tar",
                             build_classifier("smallcnn", NUM_CLASSES))


@pytest.fixture(scope="session")
def pinned_guide_checkpoint(tmp_path_factory):
    """`digits_guide_checkpoint`'s weights as drawn under AVX512 kernels, stored (tests/pinned/): torch's uniform_
    draws them differently in the last bit under plain kernels, and the pinned images depend on the guide."""
    model = build_classifier("smallcnn", NUM_CLASSES)
    model.load_state_dict(load_file(PINNED_GUIDE))
    return save_digits_guide(tmp_path_factory.mktemp("pinned_guide") / "model_best.pth.tar", model)


@pytest.fixture(scope="session")
def guide_file(tmp_path_factory):
    """A file where the guide checkpoint should be: resolve only checks that it exists."""
    path = tmp_path_factory.mktemp("guide") / "model_best.pth.tar"
    path.touch()
    return path
