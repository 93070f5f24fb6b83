"""A tiny Stable-Diffusion-architecture model that needs no download.

Same components and folder format as CompVis/stable-diffusion-v1-4 (UNet2DConditionModel with
cross-attention, AutoencoderKL with 4 latent channels, CLIPTextModel + byte-level BPE
CLIPTokenizer, DDIM scheduler with SD v1's noise schedule), only with small channel counts.
Preset "tiny" is the randomly initialised test model; preset "digits" is the architecture
trained on the digits generator pool by scripts/train_tiny_sd.py and shipped in
checkpoint/tiny-sd-digits/; preset "fashion" is the same network with the Fashion-MNIST class
words in its vocabulary (checkpoint/tiny-sd-fashion/). All load with `X.from_pretrained(path, subfolder=...)` and with
diffusers' Stable Diffusion pipelines.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from distdiff.pipelines.distdiff_img2img import load_stable_diffusion

logger = logging.getLogger(__name__)

# SD v1's scheduler config (CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json), as a
# DDIM scheduler since the paper samples with DDIM (docs/METHOD.md#defaults).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,  # SD v1
    "beta_start": 0.00085,  # SD v1
    "beta_end": 0.012,  # SD v1
    "beta_schedule": "scaled_linear",  # SD v1
    "clip_sample": False,  # SD v1
    "set_alpha_to_one": False,  # SD v1
    "steps_offset": 1,  # SD v1
    "prediction_type": "epsilon",  # SD v1
}

MODEL_MAX_LENGTH = 77  # SD v1 (CLIP ViT-L/14 context); pipelines pad every prompt to it

# Whole-word tokens so prompts like "a photo of the digit 3." use one token per word; any other
# text still tokenizes, falling back to byte tokens. Digits and "." are single bytes already.
VOCAB_WORDS = (
    "a", "an", "the", "of", "photo", "image", "picture", "digit", "number", "handwritten",
    "texture", "drawing", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "and", "with", "in", "on",
)
# The Fashion-MNIST class names as CLIP's tokenizer splits them (lowercase; "T-shirt or top" is
# "t", "-", "shirt", "or", "top"), so each prompt's class is a few whole-word tokens.
FASHION_WORDS = VOCAB_WORDS + ("t", "shirt", "or", "top", "trouser", "pullover", "dress", "coat", "sandal",
                               "sneaker", "bag", "ankle", "boot")

# Architecture presets: {component: config overrides}; "tokenizer" holds the whole-word vocabulary.
# Values equal to SD v1's are marked.
PRESETS = {
    # Random-weight test model: 32 px images, 16x16x4 latents; fast enough for CPU unit tests.
    "tiny": {
        "unet": {
            "sample_size": 16,
            "in_channels": 4,  # SD v1
            "out_channels": 4,  # SD v1
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),  # SD v1 pattern, 2 levels
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "block_out_channels": (16, 32),
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "cross_attention_dim": 16,
            "attention_head_dim": 8,  # SD v1
        },
        "vae": {
            "sample_size": 32,
            "in_channels": 3,  # SD v1
            "out_channels": 3,  # SD v1
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
            "block_out_channels": (8, 16),  # 2 levels: downsample factor 2
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "latent_channels": 4,  # SD v1
            "scaling_factor": 0.18215,  # SD v1
        },
        "text_encoder": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": MODEL_MAX_LENGTH,
            "hidden_act": "quick_gelu",  # SD v1
        },
        "tokenizer": {"words": VOCAB_WORDS},
    },
    # Trained on the digits pool: 32 px images, 8x8x4 latents (the digits are 8x8 upscaled, so
    # a factor-4 VAE loses little and makes UNet training 4x cheaper than 16x16 latents).
    "digits": {
        "unet": {
            "sample_size": 8,
            "in_channels": 4,  # SD v1
            "out_channels": 4,  # SD v1
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "block_out_channels": (64, 96),  # ~2.8M parameters keeps the shipped folder under 20 MB
            "layers_per_block": 1,
            "norm_num_groups": 16,
            "cross_attention_dim": 64,
            "attention_head_dim": 8,  # SD v1
        },
        "vae": {
            "sample_size": 32,
            "in_channels": 3,  # SD v1
            "out_channels": 3,  # SD v1
            "down_block_types": ("DownEncoderBlock2D",) * 3,
            "up_block_types": ("UpDecoderBlock2D",) * 3,
            "block_out_channels": (32, 64, 64),  # 3 levels: downsample factor 4
            "layers_per_block": 1,
            "norm_num_groups": 16,
            "latent_channels": 4,  # SD v1
            "scaling_factor": 0.18215,  # SD v1; train_tiny_sd.py replaces it with 1 / latent std
        },
        "text_encoder": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": MODEL_MAX_LENGTH,
            "hidden_act": "quick_gelu",  # SD v1
        },
        "tokenizer": {"words": VOCAB_WORDS},
    },
}
# Trained on the Fashion-MNIST pool: the digits network (a wider one would not train in the ~75 min
# budget on the 2-core CPU), with the clothing words in the vocabulary.
PRESETS["fashion"] = {**PRESETS["digits"], "tokenizer": {"words": FASHION_WORDS}}

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"  # SD v1 (CLIP) special tokens


def apply_merges(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encoding of one word's `pieces`: repeatedly join the adjacent pair whose merge comes first."""
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(rank.get(pair, len(rank)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        best, i = min(pairs)
        if best == len(rank):
            return pieces
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def tokenizer_files(words=VOCAB_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style byte-level BPE vocab and merge list covering every byte plus `words`."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: ord(c))
    tokens = alphabet + [c + "</w>" for c in alphabet]  # CLIP's order: bytes, then word-final bytes
    merges, known = [], set(tokens)
    for word in words:
        # First the pieces the merges so far make of the word (an earlier word's merge such as
        # "s"+"e" would otherwise split "trouser" before its own ones apply), then merge those
        # left to right so the last merge yields "word</w>".
        pieces = apply_merges(list(word[:-1]) + [word[-1] + "</w>"], merges)
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in known:
                merges.append((left, right))
                tokens.append(merged)
                known.add(merged)
            left = merged
    tokens += [BOS_TOKEN, EOS_TOKEN]  # last ids, as in CLIP
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tokenizer(*, model_max_length: int = MODEL_MAX_LENGTH, words=VOCAB_WORDS) -> CLIPTokenizer:
    """A CLIPTokenizer built from `tokenizer_files(words)`; no download."""
    vocab, merges = tokenizer_files(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                         unk_token=EOS_TOKEN, pad_token=EOS_TOKEN, model_max_length=model_max_length)


def build_tiny_sd(*, seed: int = 0, preset: str = "tiny") -> dict:
    """Randomly initialised SD-architecture components: dict(unet, vae, text_encoder, tokenizer, scheduler)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown tiny SD preset '{preset}'; choose one of {sorted(PRESETS)}.")
    config = PRESETS[preset]
    tokenizer = build_tokenizer(words=config["tokenizer"]["words"])
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config["unet"])
    vae = AutoencoderKL(**config["vae"])
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **config["text_encoder"])
    text_encoder = CLIPTextModel(text_config)
    if config["unet"]["cross_attention_dim"] != text_config.hidden_size:
        raise ValueError(f"preset '{preset}': unet cross_attention_dim must equal the text encoder's hidden_size.")
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
            "scheduler": DDIMScheduler(**SCHEDULER_CONFIG)}


def write_bpe_files(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Write vocab.json and merges.txt (CLIP's files, read by older transformers) next to tokenizer.json."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def save_components(components: dict, output_dir: str | Path) -> Path:
    """Write SD components in diffusers' folder format (safetensors), replacing `output_dir` atomically."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # model_index.json names the StableDiffusionPipeline classes, safety checker and feature
    # extractor null, so both component-wise from_pretrained and the SD pipelines load the folder.
    pipeline = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        write_bpe_files(components["tokenizer"], staging / "tokenizer")
        old = None
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(output_dir, old)
        os.replace(staging, output_dir)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("saved SD components to %s", output_dir)
    return output_dir


def save_tiny_sd(output_dir: str | Path, *, seed: int = 0, preset: str = "tiny") -> Path:
    """Build a random tiny SD (`build_tiny_sd`) and save it in diffusers' folder format."""
    return save_components(build_tiny_sd(seed=seed, preset=preset), output_dir)


def load_tiny_sd(path: str | Path, *, device: str | torch.device = "cpu") -> dict:
    """The fp32 components (frozen, eval mode) of a folder written by `save_tiny_sd` (or any SD folder), loaded
    as every SD model is (distdiff.pipelines.loading)."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} has no model_index.json; create the folder with scripts/make_tiny_sd.py "
                                f"or scripts/train_tiny_sd.py.")
    return load_stable_diffusion(str(path), device=device, precision="fp32").components


@torch.no_grad()
def vae_round_trip_error(vae, images: torch.Tensor, *, batch_size: int = 256) -> dict:
    """Mean absolute and root-mean-square error, in [0, 1] pixel units, of decoding the posterior means of
    `images` [N, 3, H, W] in [-1, 1] (SD's VAE input range); the mean is the deterministic round trip."""
    abs_sum = sq_sum = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        decoded = vae.decode(vae.encode(batch).latent_dist.mean).sample.clamp(-1.0, 1.0)
        diff = (decoded - batch) / 2.0  # [-1, 1] -> [0, 1] units
        abs_sum += diff.abs().sum().item()
        sq_sum += diff.pow(2).sum().item()
    count = images.numel()
    return {"mae": abs_sum / count, "rmse": (sq_sum / count) ** 0.5, "num_images": len(images)}
