"""GIF-SD (Zhang et al., NeurIPS 2023, "Expanding Small-Scale Datasets with Guided Imagination"), a rival of
DistDiff in the same harness (docs/METHOD.md#gif-sd-a-rival-in-the-same-harness).

After plain img2img, GIF-SD perturbs the final latent channel-wise, z' = (1 + e) z + b with e ~ U[0,1)
and b ~ N(0,1) per image and channel, takes one signed-gradient ascent step of size 0.1 on (e, b)
for the score

    S = mean_b(H(p(x')) - H(p(x_src))) + mean_b p(x')[argmax p(x_src)] + KL(log softmax f(x') || log softmax mean f(x'))

(H the entropy of the classifier's softmax p: "class-maintained information boosting"; the KL of
the batch's features to their mean: "sample diversity promotion"), applies the moved (e, b), projects
onto the L-inf ball of radius eps around z and decodes. Their code
(Vanint/DatasetExpansion, GIF_SD/*/dataset_expansion_stable_diffusion_CLIP_batch_optimization*.py)
scores with CLIP ViT-B/32 zero-shot; this port scores with the guide classifier (its softmax and its
L2-normalised pooled features) by default, since no CLIP weights can be had offline, or with a CLIP model's
zero-shot predictions where `clip` names one (distdiff/models/clip_zero_shot.py). DistDiff's transform
guidance is this step moved inside the sampling loop with a prototype energy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from distdiff.method.guidance import Guidance, GuidanceOutput, StepContext, project_linf
from distdiff.method.records import Record
from distdiff.method.transform import draw_transform
from distdiff.utils.settings import POSITIVE, check_option

EPS = 0.8  # L-inf radius around z_0: their README's --constraint_value for CIFAR-100, Cars, DTD, Flowers, Pets
STEP_SIZE = 0.1  # their signed step on (e, b): channel_noise.data.add_(0.1 * torch.sign(grad))
# Their prompts: "{domain} {adjective} {class name}", each drawn uniformly per image (domain_lsit, adjective_lsit).
DOMAINS = ("an image of", "a real-world photo of", "a cartoon image of", "an oil painting of", "a sketch of")
ADJECTIVES = ("", "colorful", "stylized", "high-contrast", "low-contrast", "posterized", "solarized", "sheared",
              "bright", "dark")


def prompt_variants(class_name: str) -> list[str]:
    """Their prompts for one class, domain-major (index = domain * len(ADJECTIVES) + adjective), spaces as theirs
    ("an image of  dog" where the adjective is empty)."""
    return [f"{domain} {adjective} {class_name}" for domain in DOMAINS for adjective in ADJECTIVES]


def draw_prompt(generator: torch.Generator) -> int:
    """One image's prompt variant: a domain and an adjective drawn uniformly, as an index into prompt_variants."""
    domain = int(torch.randint(len(DOMAINS), (1,), generator=generator))
    adjective = int(torch.randint(len(ADJECTIVES), (1,), generator=generator))
    return domain * len(ADJECTIVES) + adjective


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """-sum_k p log p per row of probs [B,K]: [B]."""
    return -(probs * torch.log(probs)).sum(dim=1)


def gif_score(logits: torch.Tensor, features: torch.Tensor, source_probs: torch.Tensor, groups: torch.Tensor
              ) -> torch.Tensor:
    """Their score S (module docstring) of perturbed images: logits [B,K], L2-normalised features [B,D], the
    source images' softmax [B,K], and the group [B] of each image (copies of one source: their batch).

    The KL term is their KLDivLoss(batchmean, log_target) within each group, summed over groups and divided by
    the batch size, which is theirs for one group."""
    probs = logits.softmax(dim=-1)
    delta_entropy = (entropy(probs) - entropy(source_probs)).mean()
    top1 = probs.gather(1, source_probs.argmax(dim=1, keepdim=True)).mean()
    divergence = features.new_zeros(())
    for group in groups.unique():
        members = features[groups == group]
        target = F.log_softmax(members.mean(dim=0, keepdim=True).expand_as(members), dim=1)
        log_members = F.log_softmax(members, dim=1)
        divergence = divergence + (target.exp() * (target - log_members)).sum()
    return delta_entropy + top1 + divergence / features.shape[0]


def gif_step(latents: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, score: Callable[[torch.Tensor],
             torch.Tensor], *, step_size: float = STEP_SIZE, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Their update of z_0 [B,C,h,w] from (e, b) [B,C,1,1]: one signed ascent step of `step_size` on (e, b) for
    score((1 + e) z + b), then (1 + e') z + b' projected onto the L-inf ball of radius eps around z.

    Returns the new latents (their dtype) and, per image [B], the share of elements the step took outside
    the ball (Record.EPS_SATURATED, as transform guidance's)."""
    scale, bias = scale.detach().requires_grad_(True), bias.detach().requires_grad_(True)
    z = latents.detach().float()
    with torch.enable_grad():
        value = score(z * (1 + scale) + bias)
        grad_scale, grad_bias = torch.autograd.grad(value, [scale, bias])
    with torch.no_grad():
        moved = z * (1 + scale + step_size * torch.sign(grad_scale)) + bias + step_size * torch.sign(grad_bias)
        projected = project_linf(moved, z, eps)
        saturated = ((moved - z).abs() > eps).float().mean(dim=tuple(range(1, z.ndim)))
    return projected.to(latents.dtype), saturated


@dataclass(frozen=True)
class GifGuidance(Guidance):
    """GIF-SD's latent perturbation after sampling (their defaults: eps 0.8, step 0.1); no hook inside the loop.

    `clip`: the CLIP model (hub id or folder) whose zero-shot predictions score the images, as in their code;
    None scores with the guide. The caller loads it and hands it to the sampler as its classifier."""

    name = "gif_sd"
    uses_sources = True
    eps: float = field(default=EPS, metadata={"param": "gif_eps"})
    step_size: float = field(default=STEP_SIZE, metadata={"param": "gif_step_size"})
    clip: str | None = field(default=None, metadata={"param": "gif_clip"})

    @property
    def owner(self) -> str:
        return type(self).__name__

    def __post_init__(self):
        check_option(self.owner, "eps", self.eps, POSITIVE)
        check_option(self.owner, "step_size", self.step_size, POSITIVE)

    def check_schedule(self, *, steps: int, start: int) -> None:
        """Nothing to check: the perturbation follows the last step, whatever the schedule."""

    def prompt_variants(self, class_prompts: Sequence[str], class_names: Sequence[str]) -> list[list[str]]:
        """Their domain x adjective templates over each class name (the dataset's own prompts unused)."""
        return [prompt_variants(name) for name in class_names]

    def draw_prompt(self, generator: torch.Generator) -> int:
        """A domain and an adjective, each uniform (their random.choice)."""
        return draw_prompt(generator)

    def final_latents(self, latents: torch.Tensor, ctx: StepContext) -> GuidanceOutput:
        """z_0 perturbed by their one signed step on (e, b) and projected within eps; stats: eps saturation."""
        if ctx.classify is None or ctx.source_probs is None or ctx.groups is None:
            raise ValueError("GIF-SD needs a classifier's predictions on the decoded and the source images and each "
                             "image's source (the sampler's classify, source_probs and groups); none were given.")
        scale, bias = draw_transform(ctx.generators, latents.shape[1])
        classify, source_probs = ctx.classify, ctx.source_probs.float()

        def score(z: torch.Tensor) -> torch.Tensor:
            logits, features = classify(z)
            return gif_score(logits.float(), features.float(), source_probs, ctx.groups)

        out, saturated = gif_step(latents, scale.to(latents.device), bias.to(latents.device), score,
                                  step_size=self.step_size, eps=self.eps)
        return GuidanceOutput(out, {Record.EPS_SATURATED: saturated})
