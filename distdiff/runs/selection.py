"""Best of k: make k candidates of each synthetic image and keep the one the guide scores best (an option of ours).

Candidate 0 is the image a run without selection makes (same seed); candidate j > 0 has its own
seed, image_seed(seed, "candidate", j). Each candidate is scored on its final image by
method.observers.SELECTION_SCORES (the energy, lower is better, or the guide's probability of the
intended class, higher is better), and the kept image carries its candidate index, its score and
the records its own run made. It costs k times the sampling.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from distdiff.method.records import Record
from distdiff.method.observers import SELECTION_SCORES
from distdiff.pipelines.distdiff_img2img import DistDiffOutput
from distdiff.pipelines.sampling import image_seed


def candidate_seeds(seeds: Sequence[int], candidate: int) -> list[int]:
    """The seeds of candidate `candidate` of each image: the image's own for 0, a hash of it for the others."""
    return list(seeds) if candidate == 0 else [image_seed(seed, "candidate", candidate) for seed in seeds]


def best_of(outputs: Sequence[DistDiffOutput], *, by: str) -> DistDiffOutput:
    """Per image, the candidate whose records[Record.SELECTION_SCORE] is best by SELECTION_SCORES[`by`]; ties: the first."""
    scores = torch.tensor([out.records[Record.SELECTION_SCORE] for out in outputs])  # [k, B]
    lower_is_better = SELECTION_SCORES[by][1]
    chosen = (scores if lower_is_better else -scores).argmin(dim=0)  # argmin returns the first of equal values
    images = torch.stack([outputs[int(c)].images[i] for i, c in enumerate(chosen)])
    keys = set().union(*(out.records for out in outputs))
    records = {key: [outputs[int(c)].records[key][i] if key in outputs[int(c)].records else None
                     for i, c in enumerate(chosen)] for key in keys}
    records[Record.CANDIDATE] = chosen.tolist()
    return DistDiffOutput(images=images, records=records)


def generate_best_of(generate: Callable[[list[int]], DistDiffOutput], seeds: Sequence[int], *, candidates: int,
                     by: str) -> DistDiffOutput:
    """`generate(seeds)` (one pipeline call whose observers include a CandidateScore) for each of `candidates`
    candidate seed lists, then best_of; with one candidate, that one call."""
    if candidates < 1:
        raise ValueError(f"--candidates must be at least 1, got {candidates}.")
    if candidates == 1:
        return generate(list(seeds))
    return best_of([generate(candidate_seeds(seeds, j)) for j in range(candidates)], by=by)
