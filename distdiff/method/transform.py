"""Transform guidance, the paper's method (docs/METHOD.md#transform-guidance).

At schedule index T - M, learn a per-channel scale and bias of z_t by one gradient step on the
energy of `period` look-ahead DDIM steps, then keep z_t inside an L-infinity ball of radius eps
around the unguided latent. Options of ours, each off by default: start from the identity instead
of the random draw, take several gradient steps, or learn an r x r field per channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

import torch
import torch.nn.functional as F

from distdiff.method.guidance import (EPS, Denoise, GuidanceOutput, ImageEnergy, StepContext, WindowGuidance,
                                      project_linf, typed_choice)
from distdiff.method.records import Record
from distdiff.utils.settings import AT_LEAST_1, POSITIVE, check_option

logger = logging.getLogger(__name__)


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


class TransformInit(str, Enum):
    """Where the transform's (e, b) start: the paper's random draw, or the identity (an option of ours: the draw
    alone pushes most latent elements onto the eps ball, blind to the energy; docs/METHOD.md#transform-guidance)."""

    RANDOM = "random"
    IDENTITY = "identity"

    def start(self, generators: Sequence[torch.Generator], channels: int, resolution: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(e, b), each [B, channels, r, r] float32 on CPU."""
        start = draw_transform if self is TransformInit.RANDOM else identity_transform
        return start(generators, channels, resolution)


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
                       image_energy: ImageEnergy, generators: Sequence[torch.Generator], rho: float,
                       eps: float = EPS, normalize: bool = True, init: TransformInit = TransformInit.RANDOM,
                       iterations: int = 1, resolution: int = 1) -> TransformStep:
    """`iterations` gradient steps on a scale/bias of z_t [B,C,h,w] (per channel, or an r x r field per
    channel) started at `init`, then projection onto the eps ball (the paper: one per-channel step from a
    random draw)."""
    latents = latents.detach()
    scale, bias = TransformInit(init).start(generators, latents.shape[1], resolution)
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


def transform_step_stats(latents: torch.Tensor, step: TransformStep, *, eps: float) -> dict[Record, torch.Tensor]:
    """STEP_KEYS of one transform step from z_t [B,C,h,w]: each [B] float32."""
    z = latents.detach().float()
    dims = tuple(range(1, z.ndim))
    # Saturation is read before the projection: after it, rounding in fp16 blurs "on the surface".
    shifted = apply_transform(z, step.new_scale, step.new_bias) - z
    drawn = project_linf(apply_transform(z, step.scale, step.bias), z, eps)
    guided = step.latents.float()
    return {Record.EPS_SATURATED: (shifted.abs() > eps).float().mean(dim=dims),
            Record.MOVE_DRAW: (drawn - z).pow(2).mean(dim=dims).sqrt(),
            Record.MOVE_GRAD: (guided - drawn).pow(2).mean(dim=dims).sqrt()}


@dataclass(frozen=True)
class TransformGuidance(WindowGuidance):
    """The paper's transform guidance at index T - M: z_t moved toward the prototypes, within eps of itself.

    Defaults: docs/METHOD.md#defaults (M 20, period 2, rho 10 from WindowGuidance; eps 0.2).
    """

    name = "transform"
    eps: float = field(default=EPS, metadata={"param": "constraint_value"})
    # L2-normalised features in the energy (consistent choice; the authors' code: not here)
    normalize: bool = field(default=True, metadata={"param": "transform_feature_norm"})
    # the paper's random (e, b) draw; identity is an option of ours
    init: TransformInit = field(default=TransformInit.RANDOM, metadata={"param": "transform_init"})
    # the paper's single gradient step; more is an option of ours
    iterations: int = field(default=1, metadata={"param": "transform_iters"})
    # the paper's per-channel (1 x 1) transform; an r x r field is an option of ours
    resolution: int = field(default=1, metadata={"param": "transform_resolution"})

    def __post_init__(self):
        super().__post_init__()
        check_option(self.owner, "eps", self.eps, POSITIVE)
        check_option(self.owner, "iterations", self.iterations, AT_LEAST_1)
        check_option(self.owner, "resolution", self.resolution, AT_LEAST_1)
        object.__setattr__(self, "init", typed_choice(self.owner, "init", self.init, TransformInit))

    def applies_at(self, index: int, steps: int) -> bool:
        """Only at T - M: the look-ahead covers `period` steps, the sampler then steps from the new z_t."""
        return index == self.first_index(steps)

    def before_step(self, latents: torch.Tensor, index: int, ctx: StepContext) -> GuidanceOutput:
        """z_t moved toward the prototypes, within eps; stats: eps saturation and the draw's and gradient's moves."""
        step = transform_guidance(latents, ctx.timesteps[index:index + self.period], denoise=ctx.denoise,
                                  image_energy=ctx.image_energy, generators=ctx.generators, rho=self.rho,
                                  eps=self.eps, normalize=self.normalize, init=self.init,
                                  iterations=self.iterations, resolution=self.resolution)
        logger.debug("transform guidance at index %d: look-ahead energy %.4f", index, step.energy)
        return GuidanceOutput(step.latents, transform_step_stats(latents, step, eps=self.eps))
