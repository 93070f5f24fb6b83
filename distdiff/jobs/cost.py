"""The cost of an expansion before it runs (expand.py --dry_run; docs/COST.md): the work, the model calls per image,
their FLOPs, the peak memory of one guided step, the batch each GPU fits, and the time on named GPUs.

Nothing is loaded and nothing is written. The calls are counted from the job (distdiff/jobs/cost_calls.py); the
FLOPs per pass and the step's peak memory are measured on the meta device, on the models built from the chosen
model's own configs (distdiff/jobs/cost_meta.py). This module puts them together: the GPU times are FLOPs over a
stated share of each GPU's dense fp16 peak, an estimate until a GPU measures it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from distdiff.data.datasets import LabeledImages
from distdiff.jobs.cost_calls import Calls, Work, count_calls, plan
from distdiff.jobs.cost_meta import (Geometry, GuideSpec, PassFlops, build_meta_models, geometry, guide_spec,
                                     measure_flops, step_memory)
from distdiff.jobs.expand_config import ExpandJob
from distdiff.runs.expansion import WorkItem
from distdiff.runs.generation import halved_batches, image_strengths

logger = logging.getLogger(__name__)

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
GPU_MEMORY_GIB = {  # each card's memory as its datasheet gives it (GB, read as GiB)
    "A100 SXM": 80.0,  # NVIDIA A100 datasheet: 80GB HBM2e (a 40GB model exists too)
    "H100 SXM": 80.0,  # NVIDIA H100 datasheet: 80GB HBM3
    "RTX 4090": 24.0,  # GeForce RTX 4090 specifications: 24 GB GDDR6X
}
USABLE_MEMORY = 0.9  # the share of a card's memory a batch may fill; the rest is the CUDA context, cuBLAS/cuDNN
                     # workspaces and the allocator's slack: an assumption of ours
# Below this many GPU seconds per image the FLOPs do not set the time: each of the image's tens of denoising steps
# launches hundreds of kernels of some microseconds each. A rule of thumb of ours, said with the estimate.
LAUNCH_BOUND_SECONDS = 0.01


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
    batch_activations: dict[int, int]  # peak bytes of one guided step's tensors, weights aside, at --batch_size and
                                       # each batch a run may halve to (halved_batches), largest first
    seconds: float  # how long the dry run's measurement took
    notes: list[str] = field(default_factory=list)

    @property
    def flops_per_image(self) -> float:
        return sum(self.image_flops.values())

    @property
    def activations(self) -> int:
        """Peak bytes of one guided step's tensors at --batch_size, weights aside."""
        return self.batch_activations[self.batch_size]

    @property
    def peak_memory(self) -> int:
        return sum(self.weights.values()) + self.activations

    def settled_batch(self, memory: float) -> int | None:
        """The batch a run settles on in `memory` bytes of GPU memory (it halves on each out-of-memory error), of
        which USABLE_MEMORY is counted usable; None where even batch 1 does not fit."""
        weights = sum(self.weights.values())
        return next((batch for batch, activations in self.batch_activations.items()
                     if weights + activations <= USABLE_MEMORY * memory), None)

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
            f"  {'GPU':<10}{'peak TFLOP/s':>14}{'per image':>12}{'largest shard':>15}{'whole work':>12}"
            f"{'memory':>9}{'batch':>7}",
        ]
        for gpu, peak in GPU_PEAK_TFLOPS.items():
            lines.append(f"  {gpu:<10}{peak:>14g}{_duration(self.image_seconds(peak)):>12}"
                         f"{_duration(self.gpu_seconds(peak, max(shards))):>15}{_duration(self.gpu_seconds(peak)):>12}"
                         f"{GPU_MEMORY_GIB[gpu]:>6g} GB{self._batch_text(GPU_MEMORY_GIB[gpu] * 2 ** 30):>7}")
        lines.append(f"  batch: what a run of --batch_size {self.batch_size} settles on (it halves the batch after an "
                     f"out-of-memory error), the step's peak measured at each batch against "
                     f"{USABLE_MEMORY:.0%} of the card's memory")
        if torch.cuda.is_available():
            memory = torch.cuda.get_device_properties(0).total_memory
            lines.append(f"  this machine's {torch.cuda.get_device_name(0)}: {_gib(memory)}, batch "
                         f"{self._batch_text(memory)}")
        notes = list(self.notes)
        if self.image_seconds(max(GPU_PEAK_TFLOPS.values())) < LAUNCH_BOUND_SECONDS:
            notes.append("so few FLOPs per image are bound by kernel launches and memory traffic, not by the tensor "
                         "cores: read the GPU times as a floor")
        if self.precision == "fp32":
            notes.append("--precision fp32: the GPU times above use the fp16/bf16 tensor-core peak; fp32 runs slower "
                         "(TF32 at best)")
        lines += [f"note: {note}" for note in notes]
        lines.append(f"(measured in {self.seconds:.1f} s)")
        return "\n".join(lines)

    def _batch_text(self, memory: float) -> str:
        batch = self.settled_batch(memory)
        return "none" if batch is None else str(batch)


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
    batch_activations = {batch: step_memory(job, models, geo, guide, has_guide=has_guide, batch=batch)
                         for batch in halved_batches(job.batch_size)}
    weights = models.weight_bytes()
    if not has_guide:
        del weights["guide"]
    if job.tokens.learned:
        notes.append(f"--class_tokens learned: textual inversion ({job.tokens.inversion_steps} steps per class, once "
                     f"per output folder) is not counted")
    if job.gif_clip is not None:
        notes.append(f"--gif_clip {job.gif_clip}: GIF-SD's classifier passes are counted as the guide's, not as "
                     f"the CLIP model's")
    work = plan(job, train, list(dict.fromkeys(it.source_index for it in items)), num_shards, has_guide=has_guide)
    return CostReport(dataset=job.dataset, model=job.model, method=job.guidance.name if job.guidance else "none",
                      precision=job.precision, batch_size=job.batch_size, geometry=geo, guide=guide,
                      has_guide=has_guide, work=work, calls=calls, pass_flops=flops,
                      image_flops=flops_by_model(calls, flops), one_off=one_off_flops(work, flops),
                      weights=weights, batch_activations=batch_activations,
                      seconds=time.perf_counter() - begin, notes=notes)
