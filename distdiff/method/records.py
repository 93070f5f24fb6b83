"""The per-image measurements an expansion records: one declared name each, the columns of a manifest line.

A guidance hook's stats and an observer's records are keyed by `Record`, never by a plain string, so
a misspelt name is an AttributeError where it is written, not an empty column where it is read;
files (manifest.jsonl, report.json) hold each member's `.value`.
"""

from __future__ import annotations

from enum import Enum


class Record(Enum):
    """A per-image value; its `.value` is its key in manifest.jsonl."""

    # D_c / D_g (docs/METHOD.md#energy) of the decoded x0 prediction at the guided step before guidance, at the
    # first sampler step after it, and of the final image (EnergyRecorder).
    D_C_BEFORE = "D_c_before"
    D_G_BEFORE = "D_g_before"
    D_C_AFTER = "D_c_after"
    D_G_AFTER = "D_g_after"
    D_C_FINAL = "D_c_final"
    D_G_FINAL = "D_g_final"
    # A guided step (docs/METHOD.md#transform-guidance): the share of z_t's elements whose transformed value left
    # the eps ball, and how far (RMS over z_t's elements) the projected random draw moves z_t and the gradient
    # step then moves it further. Direct guidance has no draw and no ball: its move_grad is the RMS of rho * grad,
    # summed over its guided steps.
    EPS_SATURATED = "eps_saturated"
    MOVE_DRAW = "move_draw"
    MOVE_GRAD = "move_grad"
    # Selection among k candidates (distdiff/runs/selection.py): the kept candidate's index and its score.
    CANDIDATE = "candidate"
    SELECTION_SCORE = "selection_score"
    # The image's own img2img strength where each image draws one (DA-Fusion's per-image strength; expansion.py).
    STRENGTH = "strength"

    @classmethod
    def energy(cls, level: str, when: str) -> "Record":
        """The record of energy term `level` (D_c, D_g) at `when` (before, after, final)."""
        return cls(f"{level}_{when}")


ENERGY_KEYS = tuple(Record.energy(level, when) for when in ("before", "after", "final") for level in ("D_c", "D_g"))
STEP_KEYS = (Record.EPS_SATURATED, Record.MOVE_DRAW, Record.MOVE_GRAD)
SELECTION_KEYS = (Record.CANDIDATE, Record.SELECTION_SCORE)
RECORD_KEYS = tuple(Record)  # every column a manifest line can hold, in declaration order
