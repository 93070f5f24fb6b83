"""distdiff.models.clip_zero_shot: CLIP zero-shot logits and features, equal to GIF-SD's code on identical pixels."""

import shutil

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from transformers import AutoTokenizer, CLIPModel

from distdiff.models.clip_zero_shot import CLIP_MEAN, CLIP_STD, TEMPLATE, load_clip_zero_shot
from authors_code import gif_sd  # tests/authors_code/, beside this file

TOLERANCE = 1e-5  # float32 on any CPU kernel: the same operations, in another order
CLASSES = ["zero", "one", "two", "three"]


def their_prediction(model: CLIPModel, tokenizer, pixels: torch.Tensor) -> dict:
    """Their lines 535-540 (tests/authors_code/gif_sd.py) with this CLIP as `model` and their text classifier."""
    tokens = tokenizer([f"This is a photo of a {label}" for label in CLASSES], padding=True, return_tensors="pt")

    def embeds(output):
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    with torch.no_grad():
        text_features = embeds(model.get_text_features(**tokens)).float()
        text_features /= text_features.norm(dim=-1, keepdim=True)  # their lines 439-441
        clip = type("Clip", (), {"encode_image": staticmethod(
            lambda x: embeds(model.get_image_features(pixel_values=x)))})
        ns = {"torch": torch, "model": clip, "original_inputs": pixels, "text_classifier": text_features}
        exec(gif_sd.SOURCE_PREDICTION, ns)
    return ns


def test_logits_and_features_equal_their_zero_shot_prediction(tiny_clip_dir):
    scorer = load_clip_zero_shot(str(tiny_clip_dir), CLASSES, local_files_only=True)
    assert scorer.prompts == [TEMPLATE.format(c) for c in CLASSES] == [f"This is a photo of a {c}" for c in CLASSES]
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32) * 2 - 1  # [-1,1], already CLIP's 32 px: the resize keeps them
    logits, features = scorer.logits_and_features(images)
    assert logits.shape == (3, len(CLASSES)) and features.shape == (3, 16)
    assert torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-6)
    # The pixels their loader would hand CLIP: [0,1], normalised with the folder's statistics (not OpenAI's).
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    theirs = their_prediction(CLIPModel.from_pretrained(tiny_clip_dir).eval(),
                              AutoTokenizer.from_pretrained(tiny_clip_dir), ((images + 1) / 2 - mean) / std)
    assert torch.allclose(logits, theirs["original_outputs"], atol=TOLERANCE * 100, rtol=0)  # logits are 100 x cos
    assert torch.allclose(features, theirs["image_original_features"], atol=TOLERANCE, rtol=0)
    assert torch.allclose(logits.softmax(-1), theirs["original_output_prob"], atol=TOLERANCE, rtol=0)


def test_larger_images_are_resized_to_clip_and_out_of_range_pixels_clamped(tiny_clip_dir):
    scorer = load_clip_zero_shot(str(tiny_clip_dir), CLASSES, local_files_only=True)
    torch.manual_seed(1)
    small = torch.rand(2, 3, 32, 32) * 2 - 1
    large = torch.rand(2, 3, 80, 80) * 2 - 1
    # Antialiased bicubic to CLIP's size, as their core.imresize (MATLAB's imresize) and torchvision's resize do.
    resized = TF.resize(large, [32, 32], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    assert torch.allclose(scorer.logits_and_features(large)[1], scorer.logits_and_features(resized)[1], atol=1e-5)
    beyond = small.clone()
    beyond[:, :, :4] = 3.0  # decoded pixels past 1: their torch.clamp sees 1
    clamped = beyond.clamp(-1, 1)
    assert torch.equal(scorer.logits_and_features(beyond)[0], scorer.logits_and_features(clamped)[0])


def test_a_folder_without_pixel_statistics_uses_openai_clips(tiny_clip_dir, tmp_path):
    folder = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    (folder / "preprocessor_config.json").unlink()
    scorer = load_clip_zero_shot(str(folder), CLASSES, local_files_only=True)
    assert torch.allclose(scorer.mean.flatten(), torch.tensor(CLIP_MEAN))
    assert torch.allclose(scorer.std.flatten(), torch.tensor(CLIP_STD))


def test_a_missing_model_is_an_oserror_naming_it(tmp_path):
    with pytest.raises(OSError, match="nowhere"):
        load_clip_zero_shot(str(tmp_path / "nowhere"), CLASSES, local_files_only=True)
