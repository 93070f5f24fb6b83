"""Hierarchical energy guidance (docs/METHOD.md#energy, #transform-guidance, #direct-guidance).

One energy, E = gs * D_c + ls * D_g, measured on images decoded from the predicted clean latent,
drives both variants the way guided-diffusion hands a `cond_fn` to its sampler: the sampler
(distdiff/pipelines/distdiff_img2img.py) owns the DDIM loop and calls the named hooks of a `Guidance` at the guided
step(s), with a StepContext holding a `denoise` function (one CFG + DDIM step) and an
`image_energy` function (decode + guide + energy).

- transform guidance (the paper's method): learn a per-channel scale and bias of z_t by one
  gradient step on the energy of `period` look-ahead DDIM steps, then keep z_t inside an
  L-infinity ball around the unguided latent.
- direct guidance (ablation): z_{t-1} <- z_{t-1} - rho * grad_{z_t} E at each guided step.

The update is per image: the gradient is taken of the batch *sum* of energies, which equals the
authors' code at its batch size of 1 (their mean over a batch of B makes the step rho/B per image)
and keeps an image independent of its batch (docs/METHOD.md#differences-from-the-paper-and-the-authors-code).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from distdiff.utils.settings import check_period, check_schedule, check_settings

logger = logging.getLogger(__name__)

GS = 1.0  # weight of the class energy; the authors' expand_diff.sh (--gs default 1)
LS = 1.0  # weight of the group energy; the authors' expand_diff.sh (--ls default 1)
RHO = 10.0  # guidance learning rate; the paper's rho ablation (best of 0.1/1/10/20), expand_diff.sh RHO=10
EPS = 0.2  # L-inf radius around z_t; the authors' expand_diff.sh CON=0.2 (--constraint_value)
GUIDANCE_STEP = 20  # M: guide at schedule index T-M; the paper's M ablation, expand_diff.sh START=20
GUIDANCE_PERIOD = 2  # look-ahead steps; the paper's ablation (2 best), expand_diff.sh PERIOD=2 (Algorithm 1 shows 1)
# The authors' guide input (generate_data.py): the decoded [-1,1] image, unnormalised, resized by
# F.interpolate(size=(224, 224), mode="bicubic"): align_corners False, no antialias.
AUTHORS_GUIDE_SIZE = 224

# Per-image measurements of a guided step (docs/METHOD.md#transform-guidance), for reading what the
# gradient adds: the share of z_t's elements whose transformed value left the eps ball (and was
# clamped onto its surface), and how far, RMS over z_t's elements, the projected random draw moves
# z_t and the gradient step then moves it further. Direct guidance has no draw and no ball: its
# move_grad is the RMS of rho * grad, summed over its guided steps.
STEP_KEYS = ("eps_saturated", "move_draw", "move_grad")

# (z_t [B,C,h,w], t) -> (z_{t-1}, predicted x0 latent), one classifier-free-guided DDIM step.
Denoise = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (x0 latents [B,C,h,w], normalize) -> (E scalar, D_c [B], D_g [B]) of the decoded images.
ImageEnergy = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def energy(features: torch.Tensor, class_protos: torch.Tensor, group_protos: torch.Tensor,
           group_mask: torch.Tensor, *, gs: float = GS, ls: float = LS, normalize: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hierarchical energy of features [B,D] against each image's class [B,D] and groups [B,K,D] (mask [B,K]).

    Returns (E = mean_b(gs * D_c + ls * D_g), D_c [B], D_g [B]) with Euclidean (not squared)
    distances; the group is the valid one of highest cosine similarity to the features.
    """
    features = features.float()
    if normalize:
        features = F.normalize(features, dim=1)
    class_protos, group_protos = class_protos.float(), group_protos.float()
    if not bool(group_mask.any(dim=1).all()):
        raise ValueError("every image needs at least one valid group prototype (group_mask has an all-False row).")
    d_c = torch.linalg.vector_norm(features - class_protos, dim=1)
    cosine = F.cosine_similarity(features.unsqueeze(1), group_protos, dim=2)  # [B, K]
    cosine = cosine.masked_fill(~group_mask.bool(), float("-inf"))
    nearest = cosine.argmax(dim=1)
    chosen = group_protos[torch.arange(features.shape[0], device=features.device), nearest]
    d_g = torch.linalg.vector_norm(features - chosen, dim=1)
    return (gs * d_c + ls * d_g).mean(), d_c, d_g


def guide_preprocess(images: torch.Tensor, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                     raw: bool = False) -> torch.Tensor:
    """Differentiable guide input from decoded images [B,3,H,W] in [-1,1]: [B,3,S,S].

    Default: [0,1] (clamped as the saved PNG will be), antialiased bilinear resize to the guide's
    `image_size`, guide mean/std: the preprocessing the prototypes were built with. `raw=True` is
    the authors' code exactly: the unclamped [-1,1] tensor, bicubic without antialias to a fixed
    224 px whatever `image_size` is, no mean/std (docs/METHOD.md#energy).
    """
    if raw:
        if images.shape[-2:] == (AUTHORS_GUIDE_SIZE, AUTHORS_GUIDE_SIZE):
            return images
        return F.interpolate(images, size=(AUTHORS_GUIDE_SIZE, AUTHORS_GUIDE_SIZE), mode="bicubic",
                             align_corners=False, antialias=False)
    x = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


class GuideEnergy:
    """The guide θ with its prototypes: energy of decoded images for given class labels."""

    def __init__(self, model: torch.nn.Module, prototypes, *, image_size: int, mean: Sequence[float],
                 std: Sequence[float], raw_input: bool = False, gs: float = GS, ls: float = LS):
        self.model = model.eval().requires_grad_(False)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.class_protos = prototypes.classes.to(self.device, torch.float32)
        self.group_protos = prototypes.groups.to(self.device, torch.float32)
        self.group_mask = prototypes.group_mask.to(self.device, torch.bool)
        self.image_size, self.mean, self.std, self.raw_input = image_size, list(mean), list(std), raw_input
        self.gs, self.ls = gs, ls

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *, normalize: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E, D_c [B], D_g [B]) of decoded images [B,3,H,W] in [-1,1] with class labels [B]."""
        x = guide_preprocess(images, image_size=self.image_size, mean=self.mean, std=self.std, raw=self.raw_input)
        features = self.model.features(x.to(self.device, self.dtype))
        labels = labels.to(self.device)
        return energy(features, self.class_protos[labels], self.group_protos[labels], self.group_mask[labels],
                      gs=self.gs, ls=self.ls, normalize=normalize)

    def class_probability(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The guide's softmax probability [B] of each image's class `labels` [B], decoded images [B,3,H,W] in [-1,1]."""
        x = guide_preprocess(images, image_size=self.image_size, mean=self.mean, std=self.std, raw=self.raw_input)
        logits = self.model(x.to(self.device, self.dtype)).float()
        return logits.softmax(dim=1).gather(1, labels.to(self.device).view(-1, 1)).squeeze(1)


def project_linf(latents: torch.Tensor, center: torch.Tensor, eps: float) -> torch.Tensor:
    """Element-wise clamp of `latents` onto the L-inf ball of radius eps around `center`, exact in their dtype."""
    projected = torch.minimum(torch.maximum(latents, center - eps), center + eps)
    # center -/+ eps is rounded, which can land half an ulp outside the ball; step those back in.
    outside = (projected - center).abs() > eps
    return torch.where(outside, torch.nextafter(projected, center), projected)


def draw_transform(generators: Sequence[torch.Generator], channels: int, resolution: int = 1
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image initial scale e ~ U(0,1) and bias b ~ N(0,1), each [B, channels, r, r] float32 on CPU."""
    size = channels * resolution * resolution
    scale = torch.stack([torch.rand(size, generator=g) for g in generators])
    bias = torch.stack([torch.randn(size, generator=g) for g in generators])
    return scale.view(-1, channels, resolution, resolution), bias.view(-1, channels, resolution, resolution)


def identity_transform(generators: Sequence[torch.Generator], channels: int, resolution: int = 1
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale e = 0 and bias b = 0, [B, channels, r, r]: start at z_t itself, drawing nothing."""
    zeros = torch.zeros(len(generators), channels, resolution, resolution)
    return zeros, zeros.clone()


# Where the transform's (e, b) start: the paper's random draw, or the identity (an option of ours: the draw
# alone pushes most latent elements onto the eps ball, blind to the energy; docs/METHOD.md#transform-guidance).
TRANSFORM_INITS = {"random": draw_transform, "identity": identity_transform}


def apply_transform(latents: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(1 + e) * z + b, computed in float32 and returned in the latents' dtype.

    e and b are [B, C, 1, 1] (the paper's per-channel transform, broadcast) or a coarser field
    [B, C, r, r], upsampled to z's [h, w] by nearest neighbour (each cell covers a block of z).
    """
    if scale.shape[-2:] != (1, 1):
        scale = F.interpolate(scale, size=latents.shape[-2:], mode="nearest")
        bias = F.interpolate(bias, size=latents.shape[-2:], mode="nearest")
    return ((1.0 + scale) * latents.float() + bias).to(latents.dtype)


def lookahead_energy(latents: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                     timesteps: Sequence[torch.Tensor], *, denoise: Denoise, image_energy: ImageEnergy,
                     normalize: bool = True) -> torch.Tensor:
    """Energy of the transformed z_t: sum over `timesteps` look-ahead DDIM steps, divided by their number."""
    z = apply_transform(latents, scale, bias)
    total = 0.0
    for t in timesteps:
        z, x0 = denoise(z, t)
        total = total + image_energy(x0, normalize=normalize)[0]
    return total / len(timesteps)


@dataclass
class TransformStep:
    """Result of one transform-guidance update; scale/bias tensors are [B, C, 1, 1] (or [B, C, r, r])."""

    latents: torch.Tensor  # guided z_t, within eps of the input
    scale: torch.Tensor  # initial e, [B, C, 1, 1] or [B, C, r, r]
    bias: torch.Tensor  # initial b
    new_scale: torch.Tensor  # e' = e - rho * dE/de (after every iteration)
    new_bias: torch.Tensor  # b' = b - rho * dE/db
    energy: float  # look-ahead energy at (e, b), mean over the batch


def transform_guidance(latents: torch.Tensor, timesteps: Sequence[torch.Tensor], *, denoise: Denoise,
                       image_energy: ImageEnergy, generators: Sequence[torch.Generator], rho: float = RHO,
                       eps: float = EPS, normalize: bool = True, init: str = "random",
                       iterations: int = 1, resolution: int = 1) -> TransformStep:
    """`iterations` gradient steps on a scale/bias of z_t [B,C,h,w] (per channel, or an r x r field per
    channel) started at `init`, then projection onto the eps ball (the paper: one per-channel step from a
    random draw)."""
    latents = latents.detach()
    scale, bias = TRANSFORM_INITS[init](generators, latents.shape[1], resolution)
    scale, bias = scale.to(latents.device), bias.to(latents.device)
    new_scale, new_bias, energy = scale, bias, None
    for _ in range(iterations):
        current_scale = new_scale.detach().requires_grad_(True)
        current_bias = new_bias.detach().requires_grad_(True)
        with torch.enable_grad():
            value = lookahead_energy(latents, current_scale, current_bias, timesteps, denoise=denoise,
                                     image_energy=image_energy, normalize=normalize)
            grad_scale, grad_bias = torch.autograd.grad(value * latents.shape[0], [current_scale, current_bias])
        energy = float(value.detach()) if energy is None else energy  # the energy at the start, (e, b)
        new_scale, new_bias = current_scale.detach() - rho * grad_scale, current_bias.detach() - rho * grad_bias
    guided = project_linf(apply_transform(latents, new_scale, new_bias), latents, eps)
    return TransformStep(guided, scale, bias, new_scale, new_bias, energy)


def transform_step_stats(latents: torch.Tensor, step: TransformStep, *, eps: float) -> dict[str, torch.Tensor]:
    """STEP_KEYS of one transform step from z_t [B,C,h,w]: each [B] float32."""
    z = latents.detach().float()
    dims = tuple(range(1, z.ndim))
    # Saturation is read before the projection: after it, rounding in fp16 blurs "on the surface".
    shifted = apply_transform(z, step.new_scale, step.new_bias) - z
    drawn = project_linf(apply_transform(z, step.scale, step.bias), z, eps)
    guided = step.latents.float()
    return {"eps_saturated": (shifted.abs() > eps).float().mean(dim=dims),
            "move_draw": (drawn - z).pow(2).mean(dim=dims).sqrt(),
            "move_grad": (guided - drawn).pow(2).mean(dim=dims).sqrt()}


def direct_guidance(latents: torch.Tensor, t: torch.Tensor, *, denoise: Denoise, image_energy: ImageEnergy,
                    rho: float = RHO) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from z_t [B,C,h,w] with the energy gradient subtracted: z_{t-1} - rho * grad_{z_t} E.

    Returns that z_{t-1} and, per image [B], the RMS over elements of the move rho * grad.
    """
    with torch.enable_grad():
        z = latents.detach().requires_grad_(True)
        previous, x0 = denoise(z, t)
        value = image_energy(x0, normalize=True)[0]  # the authors' code normalises θ(x) here too
        (grad,) = torch.autograd.grad(value * latents.shape[0], [z])
    move = rho * grad.float()
    return (previous.detach() - rho * grad).to(latents.dtype), move.pow(2).mean(dim=tuple(range(1, z.ndim))).sqrt()


@dataclass
class StepContext:
    """What the sampler hands its guidance hooks and observers for one batch."""

    timesteps: torch.Tensor  # the whole DDIM schedule [T]
    denoise: Denoise  # one CFG + DDIM step on this batch
    image_energy: ImageEnergy | None  # decode + guide + energy on this batch (None without a guide)
    generators: Sequence[torch.Generator]  # one per image


@dataclass
class GuidanceOutput:
    """What a guidance hook hands back: z_t changed (before_step) or z_{t-1} (replace_step), with per-image stats."""

    latents: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # of STEP_KEYS, each [B] (direct: move_grad only)


class Guidance:
    """A sampler's guidance, in the spirit of guided-diffusion's `cond_fn`: named hooks the loop calls.

    At each schedule index where `applies_at` is true the sampler calls `before_step` (change z_t
    before the step) and then `replace_step` (return z_{t-1} to take the step in the sampler's
    place, or None to let the sampler step from the changed z_t). The defaults do nothing.
    """

    def applies_at(self, index: int, steps: int) -> bool:
        """Whether the hooks run at schedule index `index` of `steps`."""
        return False

    def check_schedule(self, *, steps: int, start: int) -> None:
        """Raise if the guided indices cannot fall in the sampled steps [start, steps)."""

    def before_step(self, latents: torch.Tensor, index: int, ctx: StepContext) -> GuidanceOutput:
        """z_t [B,C,h,w] as the step at `index` should see it."""
        return GuidanceOutput(latents)

    def replace_step(self, latents: torch.Tensor, index: int, ctx: StepContext) -> GuidanceOutput | None:
        """z_{t-1} in place of the sampler's step from z_t at `index`, or None."""
        return None


def _transform_before_step(guidance: "EnergyGuidance", latents: torch.Tensor, index: int, ctx: StepContext
                           ) -> GuidanceOutput:
    step = transform_guidance(latents, ctx.timesteps[index:index + guidance.period], denoise=ctx.denoise,
                              image_energy=ctx.image_energy, generators=ctx.generators, rho=guidance.rho,
                              eps=guidance.eps, normalize=guidance.normalize_transform, init=guidance.transform_init,
                              iterations=guidance.transform_iterations, resolution=guidance.transform_resolution)
    logger.debug("transform guidance at index %d: look-ahead energy %.4f", index, step.energy)
    return GuidanceOutput(step.latents, transform_step_stats(latents, step, eps=guidance.eps))


# Direct guidance's step size at its j-th guided step of P, as a fraction of rho: the paper's constant rho, or
# (options of ours) a decay to small steps late in denoising, where x0 is already sharp and a large gradient step
# shows as noise. j = 0 .. P-1.
RHO_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda j, steps: 1.0,
    "linear": lambda j, steps: 1.0 - j / steps,
    "cosine": lambda j, steps: 0.5 * (1.0 + math.cos(math.pi * j / steps)),
}


def _direct_replace_step(guidance: "EnergyGuidance", latents: torch.Tensor, index: int, ctx: StepContext
                         ) -> GuidanceOutput:
    j = index - guidance.first_index(len(ctx.timesteps))
    rho = guidance.rho * RHO_SCHEDULES[guidance.rho_schedule](j, guidance.period)
    previous, move = direct_guidance(latents, ctx.timesteps[index], denoise=ctx.denoise,
                                     image_energy=ctx.image_energy, rho=rho)
    return GuidanceOutput(previous, {"move_grad": move})


# method -> {hook name: implementation}: transform guidance changes z_t before the sampler's step;
# direct guidance takes the step itself, for `period` consecutive steps.
GUIDANCE_HOOKS: dict[str, dict[str, Callable]] = {
    "transform": {"before_step": _transform_before_step},
    "direct": {"replace_step": _direct_replace_step},
}
# how many consecutive schedule indices each method guides, from its period
GUIDED_STEPS: dict[str, Callable[[int], int]] = {"transform": lambda period: 1, "direct": lambda period: period}
GUIDANCE_METHODS = tuple(GUIDANCE_HOOKS)


@dataclass
class EnergyGuidance(Guidance):
    """The paper's energy guidance: which schedule indices are guided and how (defaults: docs/METHOD.md#defaults)."""

    method: str = "transform"
    guidance_step: int = GUIDANCE_STEP
    period: int = GUIDANCE_PERIOD
    rho: float = RHO
    eps: float = EPS
    normalize_transform: bool = True  # consistent choice; the authors' code does not normalise here
    transform_init: str = "random"  # the paper's random (e, b) draw; "identity" is an option of ours
    transform_iterations: int = 1  # the paper's single gradient step; more is an option of ours
    transform_resolution: int = 1  # the paper's per-channel (1 x 1) transform; an r x r field is an option of ours
    rho_schedule: str = "constant"  # direct guidance's rho over its steps: the paper's constant; others are ours

    def __post_init__(self):
        if self.method not in GUIDANCE_HOOKS:
            raise ValueError(f"unknown guidance method '{self.method}'; choose one of {GUIDANCE_METHODS}.")
        if self.transform_init not in TRANSFORM_INITS:
            raise ValueError(f"unknown transform init '{self.transform_init}'; choose one of {sorted(TRANSFORM_INITS)}.")
        if self.transform_iterations < 1:
            raise ValueError(f"--transform_iters must be at least 1, got {self.transform_iterations}.")
        if self.rho_schedule not in RHO_SCHEDULES:
            raise ValueError(f"unknown rho schedule '{self.rho_schedule}'; choose one of {sorted(RHO_SCHEDULES)}.")
        if self.transform_resolution < 1:
            raise ValueError(f"--transform_resolution must be at least 1, got {self.transform_resolution}.")
        check_settings(rho=self.rho, constraint_value=self.eps)
        check_period(guidance_step=self.guidance_step, guidance_period=self.period)

    def check_schedule(self, *, steps: int, start: int) -> None:
        """Guidance at T - M (and its period) must lie inside the img2img steps [start, steps)."""
        check_schedule(steps=steps, guidance_step=self.guidance_step, guidance_period=self.period, start=start)

    def first_index(self, steps: int) -> int:
        """Schedule index T - M of the (first) guided step."""
        return steps - self.guidance_step

    def applies_at(self, index: int, steps: int) -> bool:
        """Whether the hooks run at schedule index `index` of `steps`."""
        first = self.first_index(steps)
        return first <= index < first + GUIDED_STEPS[self.method](self.period)

    def before_step(self, latents: torch.Tensor, index: int, ctx: StepContext) -> GuidanceOutput:
        """Transform guidance: z_t moved toward the prototypes, within eps."""
        hook = GUIDANCE_HOOKS[self.method].get("before_step")
        return hook(self, latents, index, ctx) if hook else GuidanceOutput(latents)

    def replace_step(self, latents: torch.Tensor, index: int, ctx: StepContext) -> GuidanceOutput | None:
        """Direct guidance: the DDIM step with the energy gradient subtracted."""
        hook = GUIDANCE_HOOKS[self.method].get("replace_step")
        return hook(self, latents, index, ctx) if hook else None
