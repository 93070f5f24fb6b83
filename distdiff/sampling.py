"""Stable Diffusion img2img with DDIM, classifier-free guidance and an energy-guidance hook.

docs/METHOD.md#pipeline, step 3. The components are loaded one by one with diffusers/transformers
(`X.from_pretrained(model, subfolder=...)`, the same call for a hub id and a local folder) and
driven by our own loop, which is diffusers' StableDiffusionImg2ImgPipeline step for step (see
tests/test_sampling.py) plus the guidance hook. Every image has its own CPU torch.Generator,
seeded from (seed, class, source stem, copy index), which draws, in this order, its VAE latent
sample, its img2img noise and its transform-guidance scale/bias: an image does not depend on
the batch it is in, the shard that made it or a resume.

The x0 the energy sees is the DDIM step's own pred_original_sample, so it follows the scheduler
config's prediction_type: SD 1.x (epsilon) and SD 2.x (v-prediction) alike. Loading a model folder
or hub id into a StableDiffusion is distdiff/sd_loading.py.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torchvision.transforms import v2 as T
from transformers import CLIPTextModel, CLIPTokenizer

from distdiff.guidance import STEP_KEYS, Denoise, EnergyGuidance, GuideEnergy, ImageEnergy
from distdiff.settings import check_schedule, check_settings

logger = logging.getLogger(__name__)

STRENGTH = 0.5  # img2img strength; the paper's setting and the authors' expand_diff.sh (their code's default is 0.9)
STEPS = 50  # DDIM steps T; the paper's setting, the authors' generate_data.py (num_inference_steps = 50)
GUIDANCE_SCALE = 7.5  # classifier-free guidance; the paper's setting, the authors' expand_diff.sh SCALE=7.5
PRECISION = "fp16"  # the authors' generate_data.py runs SD in fp16 (weight_dtype)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ENERGY_KEYS = ("D_c_before", "D_g_before", "D_c_after", "D_g_after", "D_c_final", "D_g_final")
RECORD_KEYS = ENERGY_KEYS + STEP_KEYS  # what generate_batch can record per image


@dataclass
class StableDiffusion:
    """The SD components on one device in one dtype (the scheduler is DDIM)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    device: torch.device
    dtype: torch.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        """Image side in pixels this model generates by default (512 for SD v1.4)."""
        return default_resolution(self.unet, self.vae)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels


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


def from_components(components: dict, *, device: torch.device | str = "cpu", precision: str = "fp32",
                    gradient_checkpointing: bool = False) -> StableDiffusion:
    """Wrap dict(unet, vae, text_encoder, tokenizer, scheduler) (e.g. distdiff.tiny_sd.build_tiny_sd())."""
    device = torch.device(device)
    dtype = resolve_dtype(precision, device)
    scheduler = components["scheduler"]
    if not isinstance(scheduler, DDIMScheduler):
        scheduler = DDIMScheduler.from_config(scheduler.config)
    models = []
    for name in ("unet", "vae", "text_encoder"):
        model = components[name].to(device)
        if model.dtype != dtype:  # casting with to(dtype) makes diffusers warn, so only when needed
            model = model.to(dtype=dtype)
        models.append(model.eval().requires_grad_(False))
    if gradient_checkpointing:  # only acts where gradients flow: the guidance backward
        models[0].enable_gradient_checkpointing()
        models[1].enable_gradient_checkpointing()
    return StableDiffusion(*models, components["tokenizer"], scheduler, device, dtype)


@dataclass
class PromptEmbeddings:
    """Text embeddings: one per class [C, L, D] and the empty prompt [1, L, D] for CFG."""

    cond: torch.Tensor
    uncond: torch.Tensor


def _embed(sd: StableDiffusion, texts: list[str]) -> torch.Tensor:
    ids = sd.tokenizer(texts, padding="max_length", max_length=sd.tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    mask = ids.attention_mask.to(sd.device) if getattr(sd.text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        return sd.text_encoder(ids.input_ids.to(sd.device), attention_mask=mask)[0].to(sd.dtype)


def encode_prompts(sd: StableDiffusion, prompts: Sequence[str]) -> PromptEmbeddings:
    """Embed each class prompt once, as diffusers' encode_prompt does (max-length padding, no clip skip)."""
    return PromptEmbeddings(_embed(sd, list(prompts)), _embed(sd, [""]))


# First schedule index of img2img at strength s of T steps (docs/METHOD.md#pipeline). The two
# agree except where s*T is not an integer in floating point: at s=0.9, T=50 diffusers starts at
# 50 - int(45.0) = 5 and the authors at int(4.999...) = 4, one step more of denoising.
START_INDEX_FORMULAS: dict[str, Callable[[int, float], int]] = {
    "diffusers": lambda steps, strength: steps - min(int(steps * strength), steps),  # Img2ImgPipeline.get_timesteps
    "authors": lambda steps, strength: int((1 - strength) * steps),  # the authors' generate_data.py
}
START_INDEX = "diffusers"


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


def encode_latent_dist(sd: StableDiffusion, images: torch.Tensor) -> torch.Tensor:
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


def decode_latents(sd: StableDiffusion, latents: torch.Tensor) -> torch.Tensor:
    """Images [B,3,H,W] in about [-1,1] from (scaled) latents [B,C,h,w]."""
    return sd.vae.decode(latents.to(sd.dtype) / sd.vae.config.scaling_factor, return_dict=False)[0]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Decoded images to [0,1] float32 on CPU, as diffusers' image processor denormalises them."""
    return (images.float() / 2.0 + 0.5).clamp(0.0, 1.0).cpu()


def make_denoiser(sd: StableDiffusion, prompts: PromptEmbeddings, labels: torch.Tensor, *,
                  guidance_scale: float = GUIDANCE_SCALE) -> Denoise:
    """(z_t, t) -> (z_{t-1}, predicted x0): one CFG + DDIM step (eta 0) for images of classes `labels` [B]."""
    labels = labels.to(sd.device)
    cfg = guidance_scale > 1.0 and sd.unet.config.time_cond_proj_dim is None  # as diffusers decides
    cond = prompts.cond[labels]
    embeds = torch.cat([prompts.uncond.expand_as(cond), cond]) if cfg else cond

    def denoise(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model_input = sd.scheduler.scale_model_input(torch.cat([z, z]) if cfg else z, t)
        # epsilon (SD 1.x) or v (SD 2.x): CFG mixes either linearly, and the scheduler's step turns it
        # into x0 by scheduler.config.prediction_type, so the energy sees the right x0 for both.
        output = sd.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if cfg:
            uncond, cond = output.chunk(2)
            output = uncond + guidance_scale * (cond - uncond)
        out = sd.scheduler.step(output, t, z)
        return out.prev_sample, out.pred_original_sample

    return denoise


def make_image_energy(sd: StableDiffusion, guide: GuideEnergy, labels: torch.Tensor) -> ImageEnergy:
    """x0 latents -> (E, D_c, D_g) of their VAE decodings for classes `labels` [B]."""
    def image_energy(x0: torch.Tensor, normalize: bool = True):
        return guide(decode_latents(sd, x0), labels, normalize=normalize)

    return image_energy


@dataclass
class BatchResult:
    """Generated images [B,3,H,W] float32 in [0,1] on CPU and per-image records (of RECORD_KEYS, or empty)."""

    images: torch.Tensor
    energies: dict[str, list[float]] = field(default_factory=dict)


def generate_batch(sd: StableDiffusion, latent_params: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int], *,
                   prompts: PromptEmbeddings, strength: float = STRENGTH, steps: int = STEPS,
                   guidance_scale: float = GUIDANCE_SCALE, guidance: EnergyGuidance | None = None,
                   guide: GuideEnergy | None = None, record_energy: bool = True,
                   start_index: str = START_INDEX) -> BatchResult:
    """Img2img for one batch: VAE posteriors [B,2C,h,w], class ids [B], one seed per image.

    The first step is img2img_start_index(steps, strength, start_index). With `guidance` (needs
    `guide`) the hook runs at schedule index T-M. With a guide and
    `record_energy`, D_c/D_g are measured on the decoded x0 prediction at the guided step before
    guidance, at the first plain step after it, and on the final image (always on L2-normalised
    features, the prototypes' space); without guidance only the final values are recorded. A
    guided batch also records its step's STEP_KEYS (direct guidance: move_grad, summed over steps).
    """
    batch = latent_params.shape[0]
    if len(seeds) != batch or labels.shape[0] != batch:
        raise ValueError(f"need one label and one seed per latent: {batch} latents, {labels.shape[0]} labels, "
                         f"{len(seeds)} seeds.")
    if guidance is not None and guide is None:
        raise ValueError("guidance needs a guide (GuideEnergy) to compute the energy.")
    generators = make_generators(seeds)
    scheduler = sd.scheduler
    scheduler.set_timesteps(steps, device=sd.device)
    timesteps = scheduler.timesteps
    start = img2img_start_index(steps, strength, start_index)
    check_settings(guidance_scale=guidance_scale)
    if guidance is not None:
        check_schedule(steps=steps, guidance_step=guidance.guidance_step, guidance_period=guidance.period, start=start)

    # Same draws, in the same order, as StableDiffusionImg2ImgPipeline with a list of generators.
    init = torch.cat([DiagonalGaussianDistribution(latent_params[i:i + 1]).sample(generator=g)
                      for i, g in enumerate(generators)]) * sd.vae.config.scaling_factor
    noise = randn_tensor(init.shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32)
    first_t = timesteps[start:start + 1].cpu().repeat(batch)
    latents = scheduler.add_noise(init, noise, first_t).to(sd.device, sd.dtype)

    labels = labels.to(sd.device)
    denoise = make_denoiser(sd, prompts, labels, guidance_scale=guidance_scale)
    image_energy = make_image_energy(sd, guide, labels) if guide is not None else None

    record = record_energy and guide is not None
    energies: dict[str, list[float]] = {}

    def measure(x0: torch.Tensor, when: str) -> None:
        _, d_c, d_g = image_energy(x0)
        energies[f"D_c_{when}"], energies[f"D_g_{when}"] = d_c.tolist(), d_g.tolist()

    after_pending = False
    with torch.no_grad():
        for index in range(start, steps):
            t = timesteps[index]
            if guidance is not None and guidance.applies_at(index, steps):
                if record and "D_c_before" not in energies:
                    measure(denoise(latents, t)[1], "before")
                out = guidance(latents, index, timesteps, denoise=denoise, image_energy=image_energy,
                               generators=generators)
                latents, after_pending = out.latents, True
                if record:  # direct guidance guides several steps: their moves add up
                    for key, value in out.stats.items():
                        energies[key] = [a + b for a, b in zip(energies.get(key, [0.0] * batch), value.tolist())]
                if out.took_step:
                    continue
            latents, x0 = denoise(latents, t)
            if after_pending and record:
                measure(x0, "after")
            after_pending = False
        if after_pending and record:
            measure(latents, "after")  # guidance ran up to the last step: z_0 is its own x0
        decoded = decode_latents(sd, latents)
        if record:
            _, d_c, d_g = guide(decoded, labels)
            energies["D_c_final"], energies["D_g_final"] = d_c.tolist(), d_g.tolist()
    return BatchResult(to_unit_range(decoded), energies)
