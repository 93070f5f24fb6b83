"""The pieces of Stable Diffusion img2img the pipeline (distdiff/pipelines/distdiff_img2img.py) is built from.

docs/METHOD.md#pipeline, step 3: the paper's sampling defaults, prompt and image encoding, the
img2img start index, per-image seeds, and the two closures the sampling loop and the guidance
share: `make_denoiser` (one CFG + DDIM step) and `make_image_energy` (decode + guide + energy).
`sd` below is a DistDiffImg2ImgPipeline (any object with its unet, vae, text_encoder, tokenizer,
device and dtype).

The x0 the energy sees is the DDIM step's own pred_original_sample, so it follows the scheduler
config's prediction_type: SD 1.x (epsilon) and SD 2.x (v-prediction) alike.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from torchvision.transforms import v2 as T

from distdiff.method.guidance import Classify, Denoise, GuideEnergy, ImageEnergy, Scorer
from distdiff.utils.settings import check_settings

logger = logging.getLogger(__name__)

STRENGTH = 0.5  # img2img strength; the paper's setting and the authors' expand_diff.sh (their code's default is 0.9)
STEPS = 50  # DDIM steps T; the paper's setting, the authors' generate_data.py (num_inference_steps = 50)
GUIDANCE_SCALE = 7.5  # classifier-free guidance; the paper's setting, the authors' expand_diff.sh SCALE=7.5
PRECISION = "fp16"  # the authors' generate_data.py runs SD in fp16 (weight_dtype)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class SamplingConfig:
    """The img2img settings of a pipeline call (its keyword arguments of the same names)."""

    strength: float = STRENGTH
    num_inference_steps: int = field(default=STEPS, metadata={"param": "steps"})  # recorded as expand.py's --steps
    guidance_scale: float = GUIDANCE_SCALE
    start_index: str = "diffusers"  # START_INDEX_FORMULAS' key: where img2img starts (see img2img_start_index)


def default_resolution(unet: UNet2DConditionModel, vae: AutoencoderKL) -> int:
    """unet.config.sample_size * VAE scale factor, as diffusers' SD pipelines compute it."""
    return unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)


def resolve_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype for `precision`; fp32 on CPU, where half precision is slow or unsupported."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {sorted(PRECISIONS)}.")
    if torch.device(device).type == "cpu" and precision != "fp32":
        logger.info("running on CPU: using fp32 instead of %s", precision)
        return torch.float32
    return PRECISIONS[precision]


@dataclass
class PromptEmbeddings:
    """Text embeddings: one per class [C, L, D] and the empty prompt [1, L, D] for CFG."""

    cond: torch.Tensor
    uncond: torch.Tensor


def _embed(sd, texts: list[str]) -> torch.Tensor:
    ids = sd.tokenizer(texts, padding="max_length", max_length=sd.tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    mask = ids.attention_mask.to(sd.device) if getattr(sd.text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        return sd.text_encoder(ids.input_ids.to(sd.device), attention_mask=mask)[0].to(sd.dtype)


def encode_prompts(sd, prompts: Sequence[str]) -> PromptEmbeddings:
    """Embed each class prompt once, as diffusers' encode_prompt does (max-length padding, no clip skip)."""
    return PromptEmbeddings(_embed(sd, list(prompts)), _embed(sd, [""]))


# First schedule index of img2img at strength s of T steps (docs/METHOD.md#pipeline). The two
# agree except where s*T is not an integer in floating point: at s=0.9, T=50 diffusers starts at
# 50 - int(45.0) = 5 and the authors at int(4.999...) = 4, one step more of denoising.
START_INDEX_FORMULAS: dict[str, Callable[[int, float], int]] = {
    "diffusers": lambda steps, strength: steps - min(int(steps * strength), steps),  # Img2ImgPipeline.get_timesteps
    "authors": lambda steps, strength: int((1 - strength) * steps),  # the authors' generate_data.py
}
START_INDEX = SamplingConfig.start_index


def img2img_start_index(steps: int, strength: float, formula: str = START_INDEX) -> int:
    """First schedule index for `strength` by `formula` (START_INDEX_FORMULAS; s=0.5, T=50 -> 25 for both)."""
    check_settings(steps=steps, strength=strength)
    if formula not in START_INDEX_FORMULAS:
        raise ValueError(f"unknown start index formula '{formula}'; choose one of {sorted(START_INDEX_FORMULAS)}.")
    return START_INDEX_FORMULAS[formula](steps, strength)


# How a source image becomes a square of the generator's resolution.
SOURCE_CROPS = {
    "center": lambda size: T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size)]),  # shorter side, crop
    "resize": lambda size: T.Resize((size, size), antialias=True),  # whole image, aspect not kept
}


def image_to_tensor(image: Image.Image, *, resolution: int, crop: str = "center") -> torch.Tensor:
    """An RGB image as the VAE's input [3, R, R] in [-1, 1]."""
    if crop not in SOURCE_CROPS:
        raise ValueError(f"unknown crop '{crop}'; choose one of {sorted(SOURCE_CROPS)}.")
    x = T.functional.to_dtype(T.functional.to_image(image.convert("RGB")), torch.float32, scale=True)
    return SOURCE_CROPS[crop](resolution)(x) * 2.0 - 1.0


def encode_latent_dist(sd, images: torch.Tensor) -> torch.Tensor:
    """VAE posterior parameters (mean, logvar) of images [B,3,R,R] in [-1,1]: [B, 2C, R/f, R/f] float32 on CPU."""
    with torch.no_grad():
        return sd.vae.encode(images.to(sd.device, sd.dtype)).latent_dist.parameters.float().cpu()


def image_seed(seed: int, *keys) -> int:
    """A stable 63-bit seed from a run seed and keys (e.g. class, stem, copy index); not Python's salted hash."""
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image (CPU so a seed gives the same draws on every device)."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def decode_latents(sd, latents: torch.Tensor) -> torch.Tensor:
    """Images [B,3,H,W] in about [-1,1] from (scaled) latents [B,C,h,w]."""
    return sd.vae.decode(latents.to(sd.dtype) / sd.vae.config.scaling_factor, return_dict=False)[0]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Decoded images to [0,1] float32 on CPU, as diffusers' image processor denormalises them."""
    return (images.float() / 2.0 + 0.5).clamp(0.0, 1.0).cpu()


def make_denoiser(sd, prompts: PromptEmbeddings, rows: torch.Tensor, *, scheduler: DDIMScheduler,
                  guidance_scale: float = GUIDANCE_SCALE) -> Denoise:
    """(z_t, t) -> (z_{t-1}, predicted x0): one CFG + DDIM step (eta 0) of `scheduler` (its timesteps set)
    for images conditioned on prompt rows `rows` [B] of `prompts` (the class labels, unless a guidance draws
    prompt variants)."""
    rows = rows.to(sd.device)
    cfg = guidance_scale > 1.0 and sd.unet.config.time_cond_proj_dim is None  # as diffusers decides
    cond = prompts.cond[rows]
    embeds = torch.cat([prompts.uncond.expand_as(cond), cond]) if cfg else cond

    def denoise(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model_input = scheduler.scale_model_input(torch.cat([z, z]) if cfg else z, t)
        # epsilon (SD 1.x) or v (SD 2.x): CFG mixes either linearly, and the scheduler's step turns it
        # into x0 by scheduler.config.prediction_type, so the energy sees the right x0 for both.
        output = sd.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if cfg:
            uncond, cond = output.chunk(2)
            output = uncond + guidance_scale * (cond - uncond)
        out = scheduler.step(output, t, z)
        return out.prev_sample, out.pred_original_sample

    return denoise


def make_classifier(sd, scorer: Scorer) -> Classify:
    """latents -> the scorer's (logits [B,K], L2-normalised features [B,D]) of their VAE decodings."""
    def classify(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return scorer.logits_and_features(decode_latents(sd, latents))

    return classify


def make_image_energy(sd, guide: GuideEnergy, labels: torch.Tensor) -> ImageEnergy:
    """x0 latents -> (E, D_c, D_g) of their VAE decodings for classes `labels` [B]."""
    def image_energy(x0: torch.Tensor, normalize: bool = True):
        return guide(decode_latents(sd, x0), labels, normalize=normalize)

    return image_energy
