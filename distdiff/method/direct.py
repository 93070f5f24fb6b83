"""Direct guidance, the paper's ablation (docs/METHOD.md#direct-guidance).

At each of `period` schedule indices from T - M on, the DDIM step itself, with the energy gradient
subtracted: z_{t-1} <- z_{t-1} - rho_j * grad_{z_t} E. The paper's rho is constant over the guided
steps; a linear or cosine decay is an option of ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from distdiff.method.records import Record
from distdiff.method.guidance import Denoise, GuidanceOutput, ImageEnergy, StepContext, WindowGuidance, typed_choice


class RhoSchedule(str, Enum):
    """Direct guidance's step size at its j-th guided step of P, as a fraction of rho: the paper's constant rho, or
    (options of ours) a decay to small steps late in denoising, where x0 is already sharp and a large gradient
    step shows as noise."""

    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"

    def factor(self, j: int, steps: int) -> float:
        """rho_j / rho at guided step j = 0 .. steps - 1."""
        if self is RhoSchedule.LINEAR:
            return 1.0 - j / steps
        if self is RhoSchedule.COSINE:
            return 0.5 * (1.0 + math.cos(math.pi * j / steps))
        return 1.0


def direct_guidance(latents: torch.Tensor, t: torch.Tensor, *, denoise: Denoise, image_energy: ImageEnergy,
                    rho: float) -> tuple[torch.Tensor, torch.Tensor]:
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


@dataclass(frozen=True)
class DirectGuidance(WindowGuidance):
    """The paper's direct guidance: the sampler's DDIM step replaced, at `period` indices from T - M, by one with
    rho_j * grad E subtracted (defaults: WindowGuidance's, docs/METHOD.md#defaults)."""

    name = "direct"
    rho_schedule: RhoSchedule = RhoSchedule.CONSTANT  # the paper's constant rho; linear / cosine are ours

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "rho_schedule", typed_choice(self.owner, "rho_schedule", self.rho_schedule,
                                                              RhoSchedule))

    def applies_at(self, index: int, steps: int) -> bool:
        """At the `period` consecutive indices from T - M."""
        first = self.first_index(steps)
        return first <= index < first + self.period

    def replace_step(self, latents: torch.Tensor, index: int, ctx: StepContext) -> GuidanceOutput:
        """The DDIM step from z_t with rho_j * grad E subtracted; stats: move_grad, the RMS of that move."""
        j = index - self.first_index(len(ctx.timesteps))
        rho = self.rho * self.rho_schedule.factor(j, self.period)
        previous, move = direct_guidance(latents, ctx.timesteps[index], denoise=ctx.denoise,
                                         image_energy=ctx.image_energy, rho=rho)
        return GuidanceOutput(previous, {Record.MOVE_GRAD: move})
