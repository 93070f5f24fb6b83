"""DA-Fusion's constants and small rules (Trabucco et al., ICLR 2024), ported from the authors' code.

"Their code" is github.com/brandontrabucco/da-fusion at commit ea784ad. DA-Fusion learns one
textual-inversion token per class (distdiff/method/textual_inversion.py), then makes img2img copies
of each real image with the prompt "a photo of a <class_token>" at a strength drawn per image from
STRENGTHS, and trains on each real image or, with probability SYNTHETIC_PROBABILITY, one of its own
copies (distdiff/data/real_or_synthetic.py). docs/METHOD.md#da-fusion-a-rival-in-the-same-harness
says what differs here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# scripts/stacking/launch_textual_inversion=1.0-0.75-0.5-0.25_*.sh: four textual-inversion augmentations
# (--strength 1.0 0.75 0.5 0.25, --probs 0.25 0.25 0.25 0.25) composed by ComposeParallel
# (semantic_aug/augmentations/compose.py), which applies one of them per image, chosen with
# np.random.choice(len(probs), p=probs): each synthetic image has one strength, drawn with equal probabilities.
STRENGTHS = (1.0, 0.75, 0.5, 0.25)
STRENGTH_PROBABILITIES = (0.25, 0.25, 0.25, 0.25)
# train_classifier.py --synthetic-probability (default 0.5, and the launch scripts pass 0.5): how often
# FewShotDataset.__getitem__ (semantic_aug/few_shot_dataset.py) replaces a real image by one of its copies.
SYNTHETIC_PROBABILITY = 0.5
# The launch scripts' --num-synthetic 10 copies per real image (train_classifier.py's own default is 15). This
# repository compares methods at 5 copies (the DistDiff paper's 5x); 10 is DA-Fusion's setting, an option.
NUM_SYNTHETIC = 10
# train_classifier.py DEFAULT_PROMPT and the launch scripts' --prompt; TextualInversion.forward formats it with
# the class token (semantic_aug/augmentations/textual_inversion.py). No final period, unlike this repo's prompt.
PROMPT = "a photo of a {name}"
# The img2img classifier-free guidance scale of every DA-Fusion launch script (--guidance-scale 7.5).
GUIDANCE_SCALE = 7.5


def token_name(class_name: str) -> str:
    """The placeholder token of a class: `<name_with_underscores>` (their textual_inversion.py format_name)."""
    return f"<{class_name.replace(' ', '_')}>"


def class_prompt(class_name: str, *, template: str = PROMPT) -> str:
    """The img2img prompt of a class, its token in the template: 'a photo of a <golden_retriever>'."""
    return template.format(name=token_name(class_name))


def strength_from_uniform(u: float, *, strengths: Sequence[float] = STRENGTHS,
                          probabilities: Sequence[float] = STRENGTH_PROBABILITIES) -> float:
    """The strength a uniform draw u in [0, 1) picks, as numpy's RandomState.choice(len(p), p=p) maps its draw."""
    if len(strengths) != len(probabilities):
        raise ValueError(f"{len(strengths)} strengths but {len(probabilities)} probabilities.")
    cdf = np.cumsum(np.asarray(probabilities, dtype=np.float64))
    cdf /= cdf[-1]
    return float(strengths[int(np.searchsorted(cdf, u, side="right"))])


def draw_strength(generator: torch.Generator, *, strengths: Sequence[float] = STRENGTHS,
                  probabilities: Sequence[float] = STRENGTH_PROBABILITIES) -> float:
    """One image's img2img strength: one float64 uniform from `generator` (pass the image's own generator) mapped by
    strength_from_uniform, so each strength comes with its probability (equal for DA-Fusion's four)."""
    u = torch.rand((), generator=generator, dtype=torch.float64, device=generator.device).item()
    return strength_from_uniform(u, strengths=strengths, probabilities=probabilities)
