"""Observers of the sampling loop: measurement that watches the pipeline without changing an image.

The pipeline (distdiff/pipelines/distdiff_img2img.py) calls each observer's hooks at fixed points of its loop; an
observer reads latents and energies, never writes them, so a run with or without one makes the
same images. `EnergyRecorder` is the one expand.py uses: the per-image records of the manifest.
"""

from __future__ import annotations

import torch

from distdiff.method.guidance import GuideEnergy, GuidanceOutput, StepContext
from distdiff.method.records import Record


class StepObserver:
    """Hooks the pipeline calls, in this order: on_start, then per schedule index on_guidance and on_guided
    (guided indices only) and on_step (indices the sampler steps itself), then on_end. Defaults do nothing.

    `records` holds what it measured per image ({Record: B values}); two observers of one call may not record
    the same Record (the pipeline refuses the clash instead of keeping one)."""

    records: dict[Record, list[float]] = {}  # an observer that records sets its own dict

    def on_start(self, ctx: StepContext, batch_size: int) -> None:
        """Before the first step."""

    def on_guidance(self, index: int, latents: torch.Tensor) -> None:
        """Before the guidance hooks run on z_t [B,C,h,w] at schedule index `index`."""

    def on_guided(self, index: int, output: GuidanceOutput) -> None:
        """After the guidance hooks at `index`: their last output (the new z_t, or z_{t-1})."""

    def on_step(self, index: int, latents: torch.Tensor, x0: torch.Tensor) -> None:
        """After the sampler's own step at `index`: z_{t-1} and the predicted x0 latents."""

    def on_end(self, latents: torch.Tensor, decoded: torch.Tensor) -> None:
        """After the loop: z_0 [B,C,h,w] and its decoding [B,3,H,W] in about [-1, 1]."""


# How a candidate is scored from the guide, decoded images [B,3,H,W] in [-1,1] and class labels [B]: (score [B],
# whether lower is better). The energy is the guidance's own gs * D_c + ls * D_g; the probability is the guide's
# softmax of the intended class, the filter common in synthetic-data work.
def _energy_score(guide: GuideEnergy, decoded: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _, d_c, d_g = guide(decoded, labels)
    return guide.gs * d_c + guide.ls * d_g


SELECTION_SCORES = {
    "energy": (_energy_score, True),
    "probability": (lambda guide, decoded, labels: guide.class_probability(decoded, labels), False),
}


class CandidateScore(StepObserver):
    """records[Record.SELECTION_SCORE]: each final image's SELECTION_SCORES[`by`] under `guide` for classes `labels` [B]."""

    def __init__(self, guide: GuideEnergy, labels: torch.Tensor, by: str):
        if by not in SELECTION_SCORES:
            raise ValueError(f"unknown selection score '{by}'; choose one of {sorted(SELECTION_SCORES)}.")
        self.guide, self.labels, self.by, self.records = guide, labels, by, {}

    def on_end(self, latents: torch.Tensor, decoded: torch.Tensor) -> None:
        score = SELECTION_SCORES[self.by][0](self.guide, decoded, self.labels)
        self.records = {Record.SELECTION_SCORE: score.float().cpu().tolist()}


class EnergyRecorder(StepObserver):
    """Per-image ENERGY_KEYS: D_c/D_g before and after guidance and final, and the guided steps' STEP_KEYS.

    The final values are `guide`'s on the decoded images of classes `labels` [B]; D_c/D_g before and
    after come from the context's image_energy on the x0 prediction (unit-norm features, the
    prototypes' space).
    Without guidance only the final values are recorded. Direct guidance's move_grad adds up over
    its guided steps.
    """

    def __init__(self, guide: GuideEnergy, labels: torch.Tensor):
        self.guide, self.labels = guide, labels
        self.records: dict[Record, list[float]] = {}

    def on_start(self, ctx: StepContext, batch_size: int) -> None:
        self.ctx, self.batch_size, self.after_pending, self.records = ctx, batch_size, False, {}

    def _measure(self, x0: torch.Tensor, when: str) -> None:
        _, d_c, d_g = self.ctx.image_energy(x0)
        self.records[Record.energy("D_c", when)], self.records[Record.energy("D_g", when)] = d_c.tolist(), d_g.tolist()

    def on_guidance(self, index: int, latents: torch.Tensor) -> None:
        if Record.D_C_BEFORE not in self.records:  # the first guided index: the unguided x0 prediction
            self._measure(self.ctx.denoise(latents, self.ctx.timesteps[index])[1], "before")

    def on_guided(self, index: int, output: GuidanceOutput) -> None:
        for key, value in output.stats.items():
            previous = self.records.get(key, [0.0] * self.batch_size)
            self.records[key] = [a + b for a, b in zip(previous, value.tolist())]
        self.after_pending = True

    def on_step(self, index: int, latents: torch.Tensor, x0: torch.Tensor) -> None:
        if self.after_pending:
            self._measure(x0, "after")
        self.after_pending = False

    def on_end(self, latents: torch.Tensor, decoded: torch.Tensor) -> None:
        if self.after_pending:
            self._measure(latents, "after")  # guidance ran up to the last step: z_0 is its own x0
        _, d_c, d_g = self.guide(decoded, self.labels)
        self.records[Record.D_C_FINAL], self.records[Record.D_G_FINAL] = d_c.tolist(), d_g.tolist()
