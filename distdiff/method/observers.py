"""Observers of the sampling loop: measurement that watches the pipeline without changing an image.

The pipeline (distdiff/pipelines/distdiff_img2img.py) calls each observer's hooks at fixed points of its loop; an
observer reads latents and energies, never writes them, so a run with or without one makes the
same images. `EnergyRecorder` is the one expand.py uses: the per-image records of the manifest.
"""

from __future__ import annotations

import torch

from distdiff.method.guidance import STEP_KEYS, GuideEnergy, GuidanceOutput, StepContext

# D_c / D_g (docs/METHOD.md#energy) of the decoded x0 prediction at the guided step before guidance,
# at the first sampler step after it, and of the final image.
ENERGY_KEYS = ("D_c_before", "D_g_before", "D_c_after", "D_g_after", "D_c_final", "D_g_final")
# Selection among k candidates (distdiff/runs/selection.py): the kept candidate's index and its score.
SELECTION_KEYS = ("candidate", "selection_score")
RECORD_KEYS = ENERGY_KEYS + STEP_KEYS + SELECTION_KEYS  # what a manifest line can record per image


class StepObserver:
    """Hooks the pipeline calls, in this order: on_start, then per schedule index on_guidance and on_guided
    (guided indices only) and on_step (indices the sampler steps itself), then on_end. Defaults do nothing."""

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
    """records["selection_score"]: each final image's SELECTION_SCORES[`by`] under `guide` for classes `labels` [B]."""

    def __init__(self, guide: GuideEnergy, labels: torch.Tensor, by: str):
        if by not in SELECTION_SCORES:
            raise ValueError(f"unknown selection score '{by}'; choose one of {sorted(SELECTION_SCORES)}.")
        self.guide, self.labels, self.by, self.records = guide, labels, by, {}

    def on_end(self, latents: torch.Tensor, decoded: torch.Tensor) -> None:
        score = SELECTION_SCORES[self.by][0](self.guide, decoded, self.labels)
        self.records = {"selection_score": score.float().cpu().tolist()}


class EnergyRecorder(StepObserver):
    """Per-image RECORD_KEYS: D_c/D_g before and after guidance and final, and the guided steps' STEP_KEYS.

    The final values are `guide`'s on the decoded images of classes `labels` [B]; D_c/D_g before and
    after come from the context's image_energy on the x0 prediction (unit-norm features, the
    prototypes' space).
    Without guidance only the final values are recorded. Direct guidance's move_grad adds up over
    its guided steps.
    """

    def __init__(self, guide: GuideEnergy, labels: torch.Tensor):
        self.guide, self.labels = guide, labels
        self.records: dict[str, list[float]] = {}

    def on_start(self, ctx: StepContext, batch_size: int) -> None:
        self.ctx, self.batch_size, self.after_pending, self.records = ctx, batch_size, False, {}

    def _measure(self, x0: torch.Tensor, when: str) -> None:
        _, d_c, d_g = self.ctx.image_energy(x0)
        self.records[f"D_c_{when}"], self.records[f"D_g_{when}"] = d_c.tolist(), d_g.tolist()

    def on_guidance(self, index: int, latents: torch.Tensor) -> None:
        if "D_c_before" not in self.records:  # the first guided index: the unguided x0 prediction
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
        self.records["D_c_final"], self.records["D_g_final"] = d_c.tolist(), d_g.tolist()
