"""CLIP zero-shot classification: what GIF-SD's code scores its perturbed images with (expand.py --gif_clip).

Their code (Vanint/DatasetExpansion, GIF_SD/*/dataset_expansion_stable_diffusion_CLIP_batch_optimization*.py)
loads CLIP ViT-B/32 (or ViT-L/14), embeds "This is a photo of a {class}" per class, and takes
100 * normalised image features @ normalised text features as the logits; the normalised image features are
also its diversity term's features. Here the same from any transformers CLIPModel (a hub id such as
openai/clip-vit-base-patch32, or a local folder). One difference, kept on purpose: both the decoded images and
the sources get CLIP's own normalisation, where their code normalises the sources with CIFAR's statistics and
feeds the decoded images unnormalised (docs/METHOD.md#gif-sd-a-rival-in-the-same-harness).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

logger = logging.getLogger(__name__)

TEMPLATE = "This is a photo of a {}"  # their text_descriptions
LOGIT_SCALE = 100.0  # their 100.0 * image_features @ text_classifier.T
# OpenAI CLIP's pixel statistics, for a folder without preprocessor_config.json (every OpenAI CLIP uses them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipZeroShot:
    """A CLIP model as a zero-shot classifier over `class_names`: logits and features of images, as GIF-SD scores."""

    def __init__(self, model: CLIPModel, tokenizer, class_names: Sequence[str], *, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD):
        self.model = model.eval().requires_grad_(False)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.image_size = model.config.vision_config.image_size
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.prompts = [TEMPLATE.format(name) for name in class_names]
        tokens = tokenizer(self.prompts, padding=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            self.text = F.normalize(_embeds(model.get_text_features(**tokens)).float(), dim=-1)  # [K,D]

    def logits_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(100 * f @ text.T [B,K], f [B,D]) for images [B,3,H,W] in [-1,1]; f the L2-normalised image features."""
        # Sources arrive on the CPU (generation.source_probabilities), decoded images on the pipeline's device.
        x = ((images.to(self.device).float() + 1.0) / 2.0).clamp(0.0, 1.0)  # their torch.clamp((x + 1) / 2, 0, 1)
        # Their core.imresize to 224: bicubic with antialiasing, as MATLAB's imresize.
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                          align_corners=False)
        x = (x - self.mean) / self.std
        features = F.normalize(_embeds(self.model.get_image_features(pixel_values=x.to(self.dtype))).float(), dim=-1)
        return LOGIT_SCALE * features @ self.text.T, features


def _embeds(output) -> torch.Tensor:
    """The projected embeddings from get_*_features, whichever form this transformers returns them in."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip_zero_shot(name: str, class_names: Sequence[str], *, device: torch.device | str = "cpu",
                        local_files_only: bool = False) -> ClipZeroShot:
    """CLIPModel, its tokenizer and pixel statistics from a hub id or folder, as a zero-shot classifier (fp32)."""
    model = CLIPModel.from_pretrained(name, local_files_only=local_files_only).to(device)
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    try:
        processor = CLIPImageProcessor.from_pretrained(name, local_files_only=local_files_only)
        mean, std = processor.image_mean, processor.image_std
    except OSError:
        logger.info("%s has no preprocessor_config.json: normalising with OpenAI CLIP's pixel statistics", name)
        mean, std = CLIP_MEAN, CLIP_STD
    return ClipZeroShot(model, tokenizer, class_names, mean=mean, std=std)
