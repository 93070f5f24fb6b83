"""The cost of an expansion before it runs (expand.py --dry_run): the work, the model calls per image, their FLOPs,
the peak memory of one guided step, and the time on named GPUs.

Nothing is loaded and nothing is written. The calls per image are counted from the job (`count_calls`, by reading
the sampler, distdiff/pipelines/distdiff_img2img.py, and each guidance method's hooks). The UNet, VAE, text encoder
and guide are built from the chosen model's own configuration files on the meta device (shapes and dtypes, no
values; distdiff/utils/meta_device.py), where torch.utils.flop_counter counts the FLOPs of each pass, forward and
backward, and the bytes of the tensors alive while one guided step runs give its peak memory. The GPU times are
FLOPs over a stated share of each GPU's dense fp16 peak: an estimate until a GPU measures it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

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
from distdiff.method.guidance import AUTHORS_GUIDE_SIZE, Guidance, guide_preprocess
from distdiff.method.transform import lookahead_energy
from distdiff.models.classifiers import build_classifier
from distdiff.pipelines.loading import check_model_exists, check_model_family
from distdiff.pipelines.sampling import (PRECISIONS, PromptEmbeddings, decode_latents, default_resolution,
                                         img2img_start_index, make_denoiser)
from distdiff.runs.expansion import ExpansionError, WorkItem, image_strengths, shard_sources
from distdiff.utils.meta_device import LiveTensorBytes, gpu_attention

logger = logging.getLogger(__name__)

META = torch.device("meta")
# Dense (no sparsity) FP16/BF16 tensor-core peaks with FP32 accumulation, what torch's half-precision matmuls use,
# in TFLOP/s.
GPU_PEAK_TFLOPS = {
    "A100 SXM": 312.0,  # NVIDIA A100 Tensor Core GPU datasheet: FP16 / BF16 Tensor Core 312 TFLOPS (624 with sparsity)
    "H100 SXM": 989.4,  # NVIDIA H100 Tensor Core GPU datasheet: FP16 / BF16 Tensor Core 1,979 TFLOPS with
                        # sparsity, "1/2 lower without sparsity"
    "RTX 4090": 165.2,  # NVIDIA Ada Lovelace architecture whitepaper (GeForce RTX 4090 column): peak FP16 Tensor
                        # TFLOPS with FP32 accumulate 165.2 (330.4 sparse; 330.3 dense with FP16 accumulate)
}
UTILISATION = 0.4  # the share of that peak assumed sustained: an assumption of ours, not a measurement
# Below this many GPU seconds per image the FLOPs do not set the time: each of the image's tens of denoising steps
# launches hundreds of kernels of some microseconds each. A rule of thumb of ours, said with the estimate.
LAUNCH_BOUND_SECONDS = 0.01
GIF_GUIDE_PASSES = 2  # GIF-SD scores with GuideEnergy.logits_and_features: model(x) and model.features(x)


@dataclass(frozen=True)
class Calls:
    """Model passes per image, each on one image: a CFG step is two UNet passes (the empty prompt's and the
    class's latent); a backward is the gradient to the pass's input (the weights are frozen)."""

    unet_forward: float = 0.0
    unet_backward: float = 0.0
    vae_decode: float = 0.0
    vae_decode_backward: float = 0.0
    guide_forward: float = 0.0
    guide_backward: float = 0.0

    def __add__(self, other: Calls) -> Calls:
        return Calls(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def __mul__(self, k: float) -> Calls:
        return Calls(*(a * k for a in astuple(self)))


def sampler_calls(job: ExpandJob, strength: float, *, cfg: bool, has_guide: bool) -> Calls:
    """The passes of one pipeline call for one image at img2img `strength` (one candidate; GIF-SD's softmax on the
    source aside): the sampler's steps and final decode, the guidance's hooks, and the EnergyRecorder's measures."""
    latents = 2 if cfg else 1  # UNet passes per denoising step
    steps = job.sampling.num_inference_steps
    sampled = steps - img2img_start_index(steps, strength, job.sampling.start_index)
    calls = Calls(unet_forward=sampled * latents, vae_decode=1)
    method = job.guidance.name if job.guidance is not None else "none"
    windowed = method in ("transform", "direct")  # the EnergyRecorder measures D_c/D_g before and after the window
    if method == "transform":  # each iteration: `period` look-ahead steps, each decoded and scored, all backpropagated
        look = job.guidance.iterations * job.guidance.period
        calls += Calls(look * latents, look * latents, look, look, look, look)
    elif method == "direct":  # `period` of the sampler's steps, each with a backward through decode and guide
        period = job.guidance.period
        calls += Calls(0, period * latents, period, period, period, period)
    elif method == "gif_sd":  # after the last step: decode z_0, the guide's logits and features, backward
        calls += Calls(0, 0, 1, 1, GIF_GUIDE_PASSES, GIF_GUIDE_PASSES)
    elif method != "none":
        raise ValueError(f"no cost model for --guidance {method}; add it to distdiff/jobs/cost.py.")
    if job.record_energy and has_guide:
        if windowed:  # before: one extra CFG step's x0, decoded and scored; after: the next x0 decoded and scored
            calls += Calls(unet_forward=latents, vae_decode=2, guide_forward=2)
        elif method == "gif_sd":  # after the perturbation: z_0 decoded again and scored
            calls += Calls(vae_decode=1, guide_forward=1)
        calls += Calls(guide_forward=1)  # D_c/D_g of the final image
    return calls


def count_calls(job: ExpandJob, *, cfg: bool, has_guide: bool, strengths: Sequence[float] | None = None) -> Calls:
    """Model passes per image of `job`: its pipeline call for each of --candidates (each scored by one guide pass
    when more than one), averaged over the images' `strengths` (default: --strength_choices equally likely, or
    --strength), plus GIF-SD's guide logits and features on the source image."""
    strengths = strengths or job.strengths.choices or (job.sampling.strength,)
    per_strength = {s: sampler_calls(job, s, cfg=cfg, has_guide=has_guide) for s in set(strengths)}
    calls = sum((per_strength[s] for s in strengths), Calls()) * (1.0 / len(strengths))
    candidates = job.selection.candidates
    if candidates > 1:
        calls = (calls + Calls(guide_forward=1)) * candidates
    if job.guidance is not None and job.guidance.uses_sources:
        calls += Calls(guide_forward=GIF_GUIDE_PASSES)
    return calls


@dataclass(frozen=True)
class Work:
    """What the job makes: sources, copies of each, images per shard (--total_split x accelerate processes), and
    the one-off passes (per run, not per image)."""

    sources: int
    copies: int
    shard_images: list[int]
    vae_encodes: int  # one per source, into the latent cache (skipped where it holds the source already)
    prompts: int  # text encoder passes: every class prompt (and variant) and the empty prompt, once
    prototype_images: int  # guide passes over the train split for the prototypes (0 without a guide)

    @property
    def images(self) -> int:
        return self.sources * self.copies


def plan(job: ExpandJob, train: LabeledImages, selected: list[int], num_shards: int, *, has_guide: bool) -> Work:
    """The work of `job` over `selected` sources of `train`, split into `num_shards` shards."""
    copies = job.num_images_per_prompt
    variants = len((job.guidance or Guidance()).prompt_variants(["prompt"], ["name"])[0])  # GIF-SD's 50 per class
    return Work(sources=len(selected), copies=copies,
                shard_images=[len(shard_sources(selected, shard=i, num_shards=num_shards)) * copies
                              for i in range(num_shards)],
                vae_encodes=len(selected), prompts=len(train.classes) * variants + 1,
                prototype_images=len(train) if has_guide else 0)


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


def flops_by_model(calls: Calls, flops: dict[str, PassFlops]) -> dict[str, float]:
    """FLOPs per image by model (UNet, VAE, guide): each pass's count times its FLOPs."""
    return {"UNet": calls.unet_forward * flops["unet"].forward + calls.unet_backward * flops["unet"].backward,
            "VAE": calls.vae_decode * flops["vae_decode"].forward
            + calls.vae_decode_backward * flops["vae_decode"].backward,
            "guide": calls.guide_forward * flops["guide"].forward + calls.guide_backward * flops["guide"].backward}


def one_off_flops(work: Work, flops: dict[str, PassFlops]) -> float:
    """FLOPs done once per run: the sources' VAE encodes, the prompts, the prototypes' guide passes."""
    return (work.vae_encodes * flops["vae_encode"].forward + work.prompts * flops["text_encoder"].forward
            + work.prototype_images * flops["guide"].forward)


def _guide_input(guide: GuideSpec, images: torch.Tensor, raw: bool) -> torch.Tensor:
    """Decoded images [B,3,H,W] in [-1,1] as the guide sees them, [B,3,S,S] float32 (GuideEnergy's preprocessing)."""
    return guide_preprocess(images, image_size=guide.image_size, mean=(0.5,) * 3, std=(0.5,) * 3, raw=raw).float()


def step_memory(job: ExpandJob, models: MetaModels, geo: Geometry, guide: GuideSpec, *, has_guide: bool,
                attention: Callable[[], ContextManager] = gpu_attention) -> int:
    """Peak bytes of the tensors alive (weights aside) while a batch of --batch_size images is encoded, takes a
    sampler step, its guided step (the method's own code, forward and backward) and its final decode and score.

    The energy's prototype distances ([B, D] work) are replaced by the features' squared norm: same passes, same
    gradients through them; GIF-SD's score likewise by a sum over the guide's softmax and features."""
    batch, (c, h, w) = job.batch_size, geo.latent
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


@dataclass(frozen=True)
class CostReport:
    """expand.py --dry_run's answer: the work, the passes per image, FLOPs, memory and GPU time estimates."""

    dataset: str
    model: str
    method: str
    precision: str
    batch_size: int
    geometry: Geometry
    guide: GuideSpec
    has_guide: bool
    work: Work
    calls: Calls
    pass_flops: dict[str, PassFlops]
    image_flops: dict[str, float]  # per image, by model
    one_off: float
    weights: dict[str, int]  # bytes per model
    activations: int  # peak bytes of one guided step's tensors, weights aside
    seconds: float  # how long the dry run's measurement took
    notes: list[str] = field(default_factory=list)

    @property
    def flops_per_image(self) -> float:
        return sum(self.image_flops.values())

    @property
    def peak_memory(self) -> int:
        return sum(self.weights.values()) + self.activations

    def total_flops(self, images: int | None = None) -> float:
        """FLOPs of `images` images (default: the whole work list) and the one-off passes."""
        return (self.work.images if images is None else images) * self.flops_per_image + self.one_off

    def gpu_seconds(self, tflops: float, images: int | None = None) -> float:
        """Estimated seconds for `images` images and the once-per-run passes (default: the whole work list) at
        UTILISATION of a `tflops` peak."""
        return self.total_flops(images) / (tflops * 1e12 * UTILISATION)

    def image_seconds(self, tflops: float) -> float:
        """Estimated seconds per image at UTILISATION of a `tflops` peak."""
        return self.flops_per_image / (tflops * 1e12 * UTILISATION)

    def format(self) -> str:
        """The report as printed by expand.py --dry_run."""
        geo, work, calls = self.geometry, self.work, self.calls
        c, h, w = geo.latent
        shards = work.shard_images
        shard_text = (f"{len(shards)} shard: {shards[0]} images" if len(shards) == 1 else
                      f"{len(shards)} shards: {min(shards)}-{max(shards)} images each")
        lines = [
            f"expand.py --dry_run: {self.dataset}, --guidance {self.method}; nothing written, no image made",
            f"model    {self.model} (its configs, built on the meta device: no weights read)",
            f"sizes    {geo.resolution} px images, {c}x{h}x{w} latents, {self.precision} on a GPU, batch "
            f"{self.batch_size}, {2 if geo.cfg else 1} UNet passes per step{' (CFG)' if geo.cfg else ''}",
            f"guide    {self.guide.arch} at {geo.guide_size} px ({self.guide.source})" if self.has_guide else
            "guide    none (no checkpoint: plain SD, D_c/D_g not recorded)",
            f"work     {work.sources} sources x {work.copies} copies = {work.images} images; {shard_text}",
            "",
            f"{'model calls per image':<24}{'forward':>9}{'backward':>10}   GFLOP per pass:"
            f"{'forward':>10}{'backward':>10}",
        ]
        rows = (("UNet (per latent)", calls.unet_forward, calls.unet_backward, self.pass_flops["unet"]),
                ("VAE decode", calls.vae_decode, calls.vae_decode_backward, self.pass_flops["vae_decode"]),
                ("guide", calls.guide_forward, calls.guide_backward, self.pass_flops["guide"]))
        for name, fwd, bwd, flops in rows:
            lines.append(f"  {name:<22}{fwd:>9g}{bwd:>10g}{'':18}"
                         f"{flops.forward / 1e9:>10.4g}{flops.backward / 1e9:>10.4g}")
        lines += [
            f"  once per run: {work.vae_encodes} VAE encodes ({_flop(self.pass_flops['vae_encode'].forward)} each; "
            f"none for sources already in the latent cache), {work.prompts} text encoder prompts, "
            f"{work.prototype_images} guide passes for the prototypes",
            "",
            f"FLOPs per image  {_flop(self.flops_per_image)} ("
            + ", ".join(f"{name} {value / self.flops_per_image:.0%}" for name, value in self.image_flops.items())
            + f"); whole work {_flop(self.total_flops())} incl. {_flop(self.one_off)} once per run",
            "  measured: torch.utils.flop_counter on the models built from the model's configs on the meta device, "
            "attention as the GPU's memory-efficient SDPA kernel",
            f"peak memory      {_gib(self.peak_memory)} for one guided step at batch {self.batch_size} in "
            f"{self.precision}: weights {_gib(sum(self.weights.values()))} ("
            + ", ".join(f"{name} {_gib(size)}" for name, size in self.weights.items())
            + f") + the step's tensors {_gib(self.activations)}",
            "  measured: the bytes of live tensors, tracked op by op while the step runs on the meta device; a GPU "
            "adds its CUDA context, kernel workspaces and allocator slack",
            "",
            f"GPU time: an estimate, not measured: FLOPs / (dense fp16/bf16 tensor-core peak x {UTILISATION:.0%} "
            f"utilisation, assumed)",
            f"  {'GPU':<10}{'peak TFLOP/s':>14}{'per image':>12}{'largest shard':>15}{'whole work':>12}",
        ]
        for gpu, peak in GPU_PEAK_TFLOPS.items():
            lines.append(f"  {gpu:<10}{peak:>14g}{_duration(self.image_seconds(peak)):>12}"
                         f"{_duration(self.gpu_seconds(peak, max(shards))):>15}{_duration(self.gpu_seconds(peak)):>12}")
        notes = list(self.notes)
        if self.image_seconds(max(GPU_PEAK_TFLOPS.values())) < LAUNCH_BOUND_SECONDS:
            notes.append("so few FLOPs per image are bound by kernel launches and memory traffic, not by the tensor "
                         "cores: read the GPU times as a floor")
        if self.precision == "fp32":
            notes.append("--precision fp32: the peaks above are fp16's; fp32 runs slower (TF32 at best)")
        lines += [f"note: {note}" for note in notes]
        lines.append(f"(measured in {self.seconds:.1f} s)")
        return "\n".join(lines)


def _flop(flops: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12)):
        if flops >= scale:
            return f"{flops / scale:.4g} {unit}"
    return f"{flops / 1e9:.4g} GFLOP"


def _gib(size: int) -> str:
    return f"{size / 2 ** 30:.2f} GiB" if size >= 2 ** 30 else f"{size / 2 ** 20:.1f} MiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3g} s" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} us"


def estimate(job: ExpandJob, train: LabeledImages, items: Sequence[WorkItem], num_shards: int) -> CostReport:
    """The cost of `job`'s work list `items` over `train`, in `num_shards` shards, measured on the meta device."""
    begin = time.perf_counter()
    notes = []
    guide_file = Path(job.guide_checkpoint).is_file()
    needs_guide = job.guidance is not None or job.selection.candidates > 1
    has_guide = guide_file or needs_guide
    if needs_guide and not guide_file:
        notes.append(f"guide checkpoint {job.guide_checkpoint} not found: the run would stop there (see the warning "
                     f"above); counted as if it were there")
    guide = guide_spec(job, train)
    logger.info("building %s and the %s guide on the meta device from their configs", job.model, guide.arch)
    models = build_meta_models(job, guide)
    geo = geometry(job, models, guide)
    strengths = image_strengths(items, job.strengths.choices, job.sampling.strength)  # each image's own draw
    calls = count_calls(job, cfg=geo.cfg, has_guide=has_guide, strengths=strengths)
    flops = measure_flops(models, geo)
    activations = step_memory(job, models, geo, guide, has_guide=has_guide)
    weights = models.weight_bytes()
    if not has_guide:
        del weights["guide"]
    if job.tokens.learned:
        notes.append(f"--class_tokens learned: textual inversion ({job.tokens.inversion_steps} steps per class, once "
                     f"per output folder) is not counted")
    work = plan(job, train, list(dict.fromkeys(it.source_index for it in items)), num_shards, has_guide=has_guide)
    return CostReport(dataset=job.dataset, model=job.model, method=job.guidance.name if job.guidance else "none",
                      precision=job.precision, batch_size=job.batch_size, geometry=geo, guide=guide,
                      has_guide=has_guide, work=work, calls=calls, pass_flops=flops,
                      image_flops=flops_by_model(calls, flops), one_off=one_off_flops(work, flops),
                      weights=weights, activations=activations,
                      seconds=time.perf_counter() - begin, notes=notes)
