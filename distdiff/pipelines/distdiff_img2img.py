"""DistDiffImg2ImgPipeline: Stable Diffusion img2img (DDIM, classifier-free guidance) with guidance hooks.

docs/METHOD.md#pipeline, step 3. A diffusers `DiffusionPipeline` over the SD components (unet,
vae, text_encoder, tokenizer, scheduler) whose `__call__` is the whole sampling loop: it is
diffusers' StableDiffusionImg2ImgPipeline step for step (tests/test_sampling.py), plus the named
hooks of a `Guidance` (distdiff/method/guidance.py) at the guided schedule indices and on z_0, the way
guided-diffusion hands its sampler a `cond_fn`, and observers (distdiff/method/observers.py) that
measure without changing anything. Use it without the scripts:

    pipe = DistDiffImg2ImgPipeline.from_pretrained("CompVis/stable-diffusion-v1-4")   # or a folder
    out = pipe(images, labels=labels, prompts=class_prompts, generator=generators,
               guidance=TransformGuidance(), guide=GuideEnergy(classifier, prototypes, ...),
               observers=[EnergyRecorder(...)])
    out.images, out.records

Every image has its own CPU torch.Generator, which draws, in this order, its VAE latent sample,
its img2img noise and its transform-guidance scale/bias: an image does not depend on the batch it
is in, the shard that made it or a resume. Each call sets up its own scheduler from the
pipeline's config, so no state carries over between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from distdiff.method.guidance import Guidance, GuideEnergy, Scorer, StepContext
from distdiff.method.observers import StepObserver
from distdiff.method.records import Record
from distdiff.pipelines.loading import load_components
from distdiff.pipelines.sampling import (GUIDANCE_SCALE, PRECISION, PRECISIONS, START_INDEX, STEPS, STRENGTH,
                                         PromptEmbeddings, decode_latents, default_resolution, encode_latent_dist,
                                         encode_prompts, img2img_start_index, make_classifier, make_denoiser,
                                         make_image_energy, resolve_dtype, to_unit_range)
from distdiff.utils.settings import check_settings


@dataclass
class DistDiffOutput(BaseOutput):
    """Images [B,3,H,W] float32 in [0,1] on CPU, and the observers' per-image records (each a list of B floats)."""

    images: torch.Tensor
    records: dict[Record, list[float]] = field(default_factory=dict)


def merge_records(observers: Sequence[StepObserver]) -> dict[Record, list[float]]:
    """Every observer's records in one dict; two observers recording the same Record is a bug, refused."""
    records: dict[Record, list[float]] = {}
    for observer in observers:
        for key, values in observer.records.items():
            if key in records:
                raise ValueError(f"two observers record {key}: {type(observer).__name__} and an earlier one.")
            records[key] = values
    return records


class DistDiffImg2ImgPipeline(DiffusionPipeline):
    """SD 1.x/2.x img2img with DDIM and CFG, guided by a `Guidance` and watched by `StepObserver`s."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, model: str, **kwargs) -> "DistDiffImg2ImgPipeline":
        """Load a hub id or diffusers folder of SD 1.x/2.x (keywords of load_stable_diffusion below: device,
        precision, gradient_checkpointing, local_files_only); other families are refused in one line."""
        return load_stable_diffusion(model, **kwargs)

    # The unet's, not DiffusionPipeline's search over every module: the loop reads these at every step.
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

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

    def prepare_latents(self, latent_params: torch.Tensor | None, generators: Sequence[torch.Generator],
                        scheduler: DDIMScheduler, first_t: torch.Tensor, batch: int) -> torch.Tensor:
        """z_t at the first step: VAE sample + img2img noise from posteriors [B,2C,h,w], or pure noise (txt2img).

        The same draws, in the same order, as diffusers' SD pipelines with a list of generators."""
        if latent_params is None:
            side = self.unet.config.sample_size
            shape = (batch, self.unet.config.in_channels, side, side)
            noise = randn_tensor(shape, generator=list(generators), device=torch.device("cpu"), dtype=torch.float32)
            return (noise * scheduler.init_noise_sigma).to(self.device, self.dtype)
        init = torch.cat([DiagonalGaussianDistribution(latent_params[i:i + 1]).sample(generator=g)
                          for i, g in enumerate(generators)]) * self.vae.config.scaling_factor
        noise = randn_tensor(init.shape, generator=list(generators), device=torch.device("cpu"), dtype=torch.float32)
        return scheduler.add_noise(init, noise, first_t.cpu().repeat(batch)).to(self.device, self.dtype)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor | None = None, *, labels: torch.Tensor | Sequence[int],
                 generator: Sequence[torch.Generator], prompts: Sequence[str] | None = None,
                 prompt_embeds: PromptEmbeddings | None = None, latent_params: torch.Tensor | None = None,
                 strength: float = STRENGTH, num_inference_steps: int = STEPS,
                 guidance_scale: float = GUIDANCE_SCALE, guidance: Guidance | None = None,
                 guide: GuideEnergy | None = None, observers: Sequence[StepObserver] = (),
                 start_index: str = START_INDEX, prompt_rows: torch.Tensor | Sequence[int] | None = None,
                 source_probs: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                 classifier: Scorer | None = None) -> DistDiffOutput:
        """Generate one image per label [B] from source images [B,3,R,R] in [0,1] (or VAE posteriors
        `latent_params` [B,2C,h,w], e.g. cached; neither: txt2img from noise), one generator per image.

        Class prompts: `prompts` (one text per class, indexed by `labels`) or their `prompt_embeds`;
        `prompt_rows` [B] picks another row per image (a guidance's prompt variants, e.g. GIF-SD's).
        The first step is img2img_start_index(num_inference_steps, strength, start_index) (0 for
        txt2img). `guidance` (an energy guidance needs `guide`) runs its hooks where its applies_at says;
        a final-latent hook may read the guide's softmax on each image's source `source_probs` [B,K] and which
        images share a source, `groups` [B], and classifies decoded images with `classifier` (default: the
        guide; e.g. GIF-SD's CLIP zero-shot, whose softmax `source_probs` then holds).
        """
        labels = torch.as_tensor(labels, dtype=torch.long)
        batch = labels.shape[0]
        if len(generator) != batch:
            raise ValueError(f"need one generator per image: {batch} labels, {len(generator)} generators.")
        scorer = classifier if classifier is not None else guide
        if guidance is not None and guidance.uses_energy and guide is None:
            raise ValueError("guidance needs a guide (GuideEnergy) to compute the energy.")
        if guidance is not None and guidance.uses_sources and scorer is None:
            raise ValueError(f"{guidance.name} classifies the images: pass a guide or a classifier.")
        if (prompts is None) == (prompt_embeds is None):
            raise ValueError("pass the class prompts as exactly one of `prompts` and `prompt_embeds`.")
        prompt_embeds = prompt_embeds if prompt_embeds is not None else encode_prompts(self, list(prompts))
        if image is not None:
            latent_params = encode_latent_dist(self, image * 2.0 - 1.0)
        if latent_params is not None and latent_params.shape[0] != batch:
            raise ValueError(f"need one source per label: {latent_params.shape[0]} sources, {batch} labels.")
        check_settings(guidance_scale=guidance_scale)
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = scheduler.timesteps
        start = 0 if latent_params is None else img2img_start_index(num_inference_steps, strength, start_index)
        if guidance is not None:
            guidance.check_schedule(steps=num_inference_steps, start=start)
        latents = self.prepare_latents(latent_params, generator, scheduler, timesteps[start:start + 1], batch)

        labels = labels.to(self.device)
        rows = labels if prompt_rows is None else torch.as_tensor(prompt_rows, dtype=torch.long).to(self.device)
        ctx = StepContext(timesteps=timesteps,
                          denoise=make_denoiser(self, prompt_embeds, rows, scheduler=scheduler,
                                                guidance_scale=guidance_scale),
                          image_energy=make_image_energy(self, guide, labels) if guide is not None else None,
                          generators=generator,
                          classify=make_classifier(self, scorer) if scorer is not None else None,
                          source_probs=source_probs, groups=groups)
        for observer in observers:
            observer.on_start(ctx, batch)
        for index in range(start, num_inference_steps):
            if guidance is not None and guidance.applies_at(index, num_inference_steps):
                for observer in observers:
                    observer.on_guidance(index, latents)
                output = guidance.before_step(latents, index, ctx)
                replaced = guidance.replace_step(output.latents, index, ctx)
                output = replaced if replaced is not None else output
                for observer in observers:
                    observer.on_guided(index, output)
                latents = output.latents
                if replaced is not None:
                    continue
            latents, x0 = ctx.denoise(latents, timesteps[index])
            for observer in observers:
                observer.on_step(index, latents, x0)
        if guidance is not None:
            final = guidance.final_latents(latents, ctx)
            if final.stats:  # a perturbation after the last step (GIF-SD) is a guided step of its own
                for observer in observers:
                    observer.on_guided(num_inference_steps, final)
            latents = final.latents
        decoded = decode_latents(self, latents)
        for observer in observers:
            observer.on_end(latents, decoded)
        return DistDiffOutput(images=to_unit_range(decoded), records=merge_records(observers))


def from_components(components: dict, *, device: torch.device | str = "cpu", precision: str = "fp32",
                    gradient_checkpointing: bool = False) -> DistDiffImg2ImgPipeline:
    """The pipeline over dict(unet, vae, text_encoder, tokenizer, scheduler) (e.g. tiny_sd.model.build_tiny_sd()),
    frozen, in eval mode, on `device` in `precision`'s dtype, with a DDIM scheduler."""
    device = torch.device(device)
    dtype = resolve_dtype(precision, device)
    scheduler = components["scheduler"]
    if not isinstance(scheduler, DDIMScheduler):
        scheduler = DDIMScheduler.from_config(scheduler.config)
    models = {}
    for name in ("unet", "vae", "text_encoder"):
        model = components[name].to(device)
        if model.dtype != dtype:  # casting with to(dtype) makes diffusers warn, so only when needed
            model = model.to(dtype=dtype)
        models[name] = model.eval().requires_grad_(False)
    if gradient_checkpointing:  # only acts where gradients flow: the guidance backward
        models["unet"].enable_gradient_checkpointing()
        models["vae"].enable_gradient_checkpointing()
    pipe = DistDiffImg2ImgPipeline(**models, tokenizer=components["tokenizer"], scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_stable_diffusion(model: str, *, device: torch.device | str = "cpu", precision: str = PRECISION,
                          gradient_checkpointing: bool = False, local_files_only: bool = False
                          ) -> DistDiffImg2ImgPipeline:
    """The pipeline of an SD 1.x/2.x hub id or local diffusers folder (distdiff.pipelines.loading: family check,
    damaged files named as such), on `device` in `precision` (fp32 on CPU)."""
    dtype = resolve_dtype(precision, device)
    components = load_components(model, dtype=dtype, local_files_only=local_files_only)
    effective = next(name for name, value in PRECISIONS.items() if value == dtype)  # logged once, above
    return from_components(components, device=device, precision=effective,
                           gradient_checkpointing=gradient_checkpointing)
