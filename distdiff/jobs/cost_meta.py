"""The cost of an expansion, measured on the meta device: the job's models built from their own configs (no weight
read), the FLOPs of each pass by torch.utils.flop_counter, and the peak bytes of the tensors alive while one guided
step runs (expand.py --dry_run; docs/COST.md; the instruments are distdiff/utils/meta_device.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from distdiff.data.datasets import LabeledImages
from distdiff.data.registry import dataset_spec
from distdiff.jobs.expand_config import ExpandJob
from distdiff.method.direct import direct_guidance
from distdiff.method.gif import gif_step
from distdiff.method.guidance import AUTHORS_GUIDE_SIZE, guide_preprocess
from distdiff.method.transform import lookahead_energy
from distdiff.models.classifiers import build_classifier
from distdiff.pipelines.loading import check_model_exists, check_model_family
from distdiff.pipelines.sampling import (PRECISIONS, PromptEmbeddings, decode_latents, default_resolution,
                                         img2img_start_index, make_denoiser)
from distdiff.runs.expansion import ExpansionError
from distdiff.utils.meta_device import LiveTensorBytes, gpu_attention

META = torch.device("meta")


@dataclass(frozen=True)
class GuideSpec:
    """The guide as the run would load it: architecture, classes, input side (from its checkpoint when there is one)."""

    arch: str
    num_classes: int
    image_size: int  # what the guide sees: its training size, or the authors' 224 with --raw_guide_input
    source: str  # where these came from, said in the report


def guide_spec(job: ExpandJob, train: LabeledImages) -> GuideSpec:
    """The guide's architecture and input from its checkpoint's info (memory-mapped: no weight is read), else what
    `train_original.py DATASET ARCH 0.1 False 0` would train: -a at the dataset's image size."""
    path = Path(job.guide_checkpoint)
    arch, classes, size = job.guide_arch, len(train.classes), dataset_spec(job.dataset).image_size
    source = "no checkpoint yet: as train_original.py would train it"
    if path.is_file():
        try:
            info = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["info"]
            arch, classes, size = info["arch"], info["num_classes"], info["image_size"]
            source = f"checkpoint {path}"
        except (RuntimeError, OSError, KeyError, TypeError, ValueError) as err:
            raise ExpansionError(f"guide checkpoint {path} cannot be read ({err}); it must be a model_best.pth.tar "
                                 f"written by train_original.py.") from err
    return GuideSpec(arch, classes, AUTHORS_GUIDE_SIZE if job.energy.raw_guide_input else size, source)


@dataclass
class MetaModels:
    """The job's models built on the meta device from their configs: what `make_denoiser` and `decode_latents` take
    as `sd` (unet, vae, device, dtype), plus the text encoder, the guide and the scheduler."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    guide: nn.Module  # a distdiff Classifier: forward -> logits, features -> pooled features
    scheduler: DDIMScheduler
    dtype: torch.dtype  # the SD models' (the guide stays float32, as load_classifier leaves it)
    device: torch.device = META

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def weight_bytes(self) -> dict[str, int]:
        """Parameters and buffers of each model, in bytes, in its dtype."""
        models = {"UNet": self.unet, "VAE": self.vae, "text encoder": self.text_encoder, "guide": self.guide}
        return {name: sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
                for name, m in models.items()}


def _on_meta(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` (built on the meta device) in `dtype`, frozen, in eval mode. nn.Module.to, not diffusers' own, which
    warns about float32 modules at every cast: a meta model has no values to keep."""
    return nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)


def build_meta_models(job: ExpandJob, guide: GuideSpec) -> MetaModels:
    """The job's SD components and guide on the meta device from their configs (a local folder's files or, for a hub
    id, its cached or downloadable configs): no weight is read."""
    hub = {"local_files_only": job.local_files_only}
    check_model_exists(job.model)
    try:
        check_model_family(job.model, hub)
        unet_config = UNet2DConditionModel.load_config(job.model, subfolder="unet", **hub)
        vae_config = AutoencoderKL.load_config(job.model, subfolder="vae", **hub)
        text_config = CLIPTextConfig.from_pretrained(job.model, subfolder="text_encoder", **hub)
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(job.model, subfolder="scheduler", **hub))
    except OSError as err:
        raise ExpansionError(f"the dry run reads --model {job.model}'s configuration (model_index.json, unet/, vae/, "
                             f"text_encoder/ and scheduler/ configs) and cannot: {str(err).rstrip('.')}. Without a "
                             f"network, a hub id needs them in the Hugging Face cache; a folder of configs alone is "
                             f"enough (`python benchmarks/sd_configs.py --write_configs DIR` writes SD v1's).") from err
    dtype = PRECISIONS[job.precision]  # the GPU's: resolve_dtype forces float32 only on CPU
    with META:
        unet = _on_meta(UNet2DConditionModel.from_config(unet_config), dtype)
        vae = _on_meta(AutoencoderKL.from_config(vae_config), dtype)
        text_encoder = _on_meta(CLIPTextModel(text_config), dtype)
        classifier = _on_meta(build_classifier(guide.arch, guide.num_classes), torch.float32)
    if job.gradient_checkpointing:  # as from_components: recomputation in the guidance backward
        unet.enable_gradient_checkpointing()
        vae.enable_gradient_checkpointing()
    return MetaModels(unet, vae, text_encoder, classifier, scheduler, dtype)


@dataclass(frozen=True)
class Geometry:
    """The sizes the passes run at."""

    resolution: int  # image side in pixels
    latent: tuple[int, int, int]  # (C, h, w)
    guide_size: int
    cfg: bool  # classifier-free guidance: two UNet passes per step

    @property
    def unet_batch(self) -> int:
        return 2 if self.cfg else 1


def geometry(job: ExpandJob, models: MetaModels, guide: GuideSpec) -> Geometry:
    """--resolution or the model's own, checked as load_model checks it, and the latent it makes."""
    resolution = job.resolution or default_resolution(models.unet, models.vae)
    factor = models.vae_scale_factor
    if resolution % factor:
        raise ExpansionError(f"--resolution {resolution} must be a multiple of the VAE's factor {factor}.")
    side = resolution // factor
    cfg = job.sampling.guidance_scale > 1.0 and models.unet.config.time_cond_proj_dim is None  # as make_denoiser
    return Geometry(resolution, (models.vae.config.latent_channels, side, side), guide.image_size, cfg)


@dataclass(frozen=True)
class PassFlops:
    """FLOPs of one pass on one image, forward and backward (the gradient to its input), by torch.utils.flop_counter:
    2 per multiply-add of matmuls, convolutions and attention; elementwise work and norms are not counted."""

    forward: float
    backward: float = 0.0


def _counted(run: Callable[[], object], attention: Callable[[], ContextManager]) -> tuple[object, float]:
    """run()'s result and the FLOPs it took."""
    with attention(), FlopCounterMode(display=False) as counter:
        result = run()
    return result, float(counter.get_total_flops())


def _pass_flops(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, per: int,
                attention: Callable[[], ContextManager]) -> PassFlops:
    """Forward and backward FLOPs of `forward` on `x` (requiring grad), divided among its `per` images."""
    out, fwd = _counted(lambda: forward(x), attention)
    _, bwd = _counted(lambda: torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out)), attention)
    return PassFlops(fwd / per, bwd / per)


def measure_flops(models: MetaModels, geo: Geometry, *, attention: Callable[[], ContextManager] = gpu_attention
                  ) -> dict[str, PassFlops]:
    """FLOPs per image of each pass at the job's sizes: the UNet at its CFG batch (halved), the VAE's decode and
    encode, the guide (its features, what the energy reads), the text encoder on one prompt."""
    c, h, w = geo.latent
    u = geo.unet_batch
    length, width = models.text_encoder.config.max_position_embeddings, models.unet.config.cross_attention_dim
    embeds = torch.zeros(u, length, width, device=META, dtype=models.dtype)
    timestep = torch.tensor(1)  # any: a pass's FLOPs do not depend on it

    def latent(batch: int) -> torch.Tensor:
        return torch.zeros(batch, c, h, w, device=META, dtype=models.dtype, requires_grad=True)

    image = torch.zeros(1, 3, geo.resolution, geo.resolution, device=META, dtype=models.dtype)
    guide_input = torch.zeros(1, 3, geo.guide_size, geo.guide_size, device=META, requires_grad=True)
    ids = torch.zeros(1, length, dtype=torch.long, device=META)
    with torch.enable_grad():
        return {
            "unet": _pass_flops(lambda z: models.unet(z, timestep, encoder_hidden_states=embeds, return_dict=False)[0],
                                latent(u), u, attention),
            "vae_decode": _pass_flops(lambda z: decode_latents(models, z), latent(1), 1, attention),
            "vae_encode": PassFlops(_counted(lambda: models.vae.encode(image).latent_dist.parameters, attention)[1]),
            "guide": _pass_flops(models.guide.features, guide_input, 1, attention),
            "text_encoder": PassFlops(_counted(lambda: models.text_encoder(ids), attention)[1]),
        }


def _guide_input(guide: GuideSpec, images: torch.Tensor, raw: bool) -> torch.Tensor:
    """Decoded images [B,3,H,W] in [-1,1] as the guide sees them, [B,3,S,S] float32 (GuideEnergy's preprocessing)."""
    return guide_preprocess(images, image_size=guide.image_size, mean=(0.5,) * 3, std=(0.5,) * 3, raw=raw).float()


def step_memory(job: ExpandJob, models: MetaModels, geo: Geometry, guide: GuideSpec, *, has_guide: bool,
                batch: int, attention: Callable[[], ContextManager] = gpu_attention) -> int:
    """Peak bytes of the tensors alive (weights aside) while a batch of `batch` images is
    encoded, takes a sampler step, its guided step (the method's own code, forward and backward) and its final decode
    and score.

    The energy's prototype distances ([B, D] work) are replaced by the features' squared norm: same passes, same
    gradients through them; GIF-SD's score likewise by a sum over the guide's softmax and features."""
    c, h, w = geo.latent
    steps = job.sampling.num_inference_steps
    raw = job.energy.raw_guide_input
    scheduler = DDIMScheduler.from_config(models.scheduler.config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    method = job.guidance.name if job.guidance is not None else "none"
    start = min(img2img_start_index(steps, s, job.sampling.start_index)
                for s in job.strengths.choices or (job.sampling.strength,))
    index = job.guidance.first_index(steps) if method in ("transform", "direct") else start
    tracker = LiveTensorBytes()
    with tracker, attention():
        width = models.unet.config.cross_attention_dim
        length = models.text_encoder.config.max_position_embeddings
        prompts = PromptEmbeddings(torch.zeros(1, length, width, device=META, dtype=models.dtype),
                                   torch.zeros(1, length, width, device=META, dtype=models.dtype))
        denoise = make_denoiser(models, prompts, torch.zeros(batch, dtype=torch.long), scheduler=scheduler,
                                guidance_scale=job.sampling.guidance_scale)

        def image_energy(x0: torch.Tensor, normalize: bool = True):
            value = models.guide.features(_guide_input(guide, decode_latents(models, x0), raw)).pow(2).sum()
            return value, value, value

        def latents() -> torch.Tensor:
            return torch.zeros(batch, c, h, w, device=META, dtype=models.dtype)

        with torch.no_grad():
            models.vae.encode(torch.zeros(batch, 3, geo.resolution, geo.resolution, device=META, dtype=models.dtype))
            denoise(latents(), timesteps[index])
        if method == "transform":
            g = job.guidance
            shape = (batch, c, g.resolution, g.resolution)
            scale, bias = (torch.zeros(shape, device=META, requires_grad=True) for _ in range(2))
            with torch.enable_grad():
                value = lookahead_energy(latents(), scale, bias, timesteps[index:index + g.period], denoise=denoise,
                                         image_energy=image_energy, normalize=g.normalize)
                torch.autograd.grad(value * batch, [scale, bias])
        elif method == "direct":
            direct_guidance(latents(), timesteps[index], denoise=denoise, image_energy=image_energy,
                            rho=job.guidance.rho)
        elif method == "gif_sd":
            def score(z: torch.Tensor) -> torch.Tensor:
                x = _guide_input(guide, decode_latents(models, z), raw)
                return models.guide(x).softmax(dim=-1).sum() + models.guide.features(x).sum()

            scale, bias = (torch.zeros(batch, c, 1, 1, device=META) for _ in range(2))
            gif_step(latents(), scale, bias, score, step_size=job.guidance.step_size, eps=job.guidance.eps)
        with torch.no_grad():
            decoded = decode_latents(models, latents())
            if has_guide:
                models.guide.features(_guide_input(guide, decoded, raw))
    return tracker.peak
