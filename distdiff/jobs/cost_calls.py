"""The cost of an expansion, counted: the model passes each image takes and the work of the whole list
(expand.py --dry_run; docs/COST.md).

The passes are read off the sampler (distdiff/pipelines/distdiff_img2img.py) and each guidance method's hooks; a
test holds them to hand counts and to a real run's FLOPs.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Sequence

from distdiff.data.datasets import LabeledImages
from distdiff.jobs.expand_config import ExpandJob
from distdiff.method.guidance import Guidance
from distdiff.pipelines.sampling import img2img_start_index
from distdiff.runs.expansion import shard_sources

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
        raise ValueError(f"no cost model for --guidance {method}; add it to distdiff/jobs/cost_calls.py and to "
                         f"cost_meta.step_memory.")
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
