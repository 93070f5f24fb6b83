"""distdiff.jobs.cost_calls: the model passes per image of each method, against hand counts."""

import pytest

import expand
from distdiff.jobs import cost_calls
from distdiff.jobs.cost_calls import Calls
from distdiff.jobs.expand_config import resolve


def calls_of(guide_file, *flags, cfg=True, has_guide=True) -> Calls:
    flags = ["-d", "digits", "--model", "m", "--guide_checkpoint", str(guide_file), *flags]
    job = resolve(expand.parse_config(flags))
    return cost_calls.count_calls(job, cfg=cfg, has_guide=has_guide)


# At the defaults (50 DDIM steps, strength 0.5: 25 sampled, CFG: 2 UNet passes a step, M 20, period 2, 1 iteration),
# by hand from the sampler and the hooks; fields: UNet fwd, UNet bwd, decode fwd, decode bwd, guide fwd, guide bwd.
HAND_COUNTS = {
    # 25 steps + 2 look-ahead steps + the recorder's extra step; decode: final + 2 look-ahead + before/after;
    # guide: 2 look-ahead + before/after/final.
    "transform": ((), Calls(56, 4, 5, 2, 5, 2)),
    "transform_no_energy_log": (("--no_energy_log",), Calls(54, 4, 3, 2, 2, 2)),
    # 3 iterations of a 3-step look-ahead: 9 steps, each decoded, scored and backpropagated.
    "transform_iters_period": (("--transform_iters", "3", "--guidance_period", "3"), Calls(70, 18, 12, 9, 12, 9)),
    # the 2 guided steps are 2 of the 25, each with a backward; the recorder as transform's.
    "direct": (("--guidance", "direct"), Calls(52, 4, 5, 2, 5, 2)),
    "direct_no_energy_log": (("--guidance", "direct", "--no_energy_log"), Calls(50, 4, 3, 2, 2, 2)),
    "none": (("--guidance", "none"), Calls(50, 0, 1, 0, 1, 0)),  # the final image's D_c/D_g: one guide pass
    "none_no_energy_log": (("--guidance", "none", "--no_energy_log"), Calls(50, 0, 1, 0, 0, 0)),
    # z_0 decoded and scored (logits + features) with a backward; the sources' logits + features; the recorder's
    # decode and score after the perturbation, and the final score.
    "gif_sd": (("--guidance", "gif_sd"), Calls(50, 0, 3, 1, 6, 2)),
    "gif_sd_no_energy_log": (("--guidance", "gif_sd", "--no_energy_log"), Calls(50, 0, 2, 1, 4, 2)),
    # 3 candidates, each transform's 56/4/5/2/5/2 plus its selection score.
    "transform_candidates": (("--candidates", "3"), Calls(168, 12, 15, 6, 18, 6)),
    # 2 candidates of (50, 0, 3, 1, 4, 2) + a score each; the sources' 2 passes once.
    "gif_sd_candidates": (("--guidance", "gif_sd", "--candidates", "2"), Calls(100, 0, 6, 2, 12, 4)),
    # strength 1.0 samples 50 steps, 0.5 samples 25: 75 UNet passes on average.
    "none_strength_choices": (("--guidance", "none", "--strength_choices", "1.0", "0.5"), Calls(75, 0, 1, 0, 1, 0)),
}


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_calls_per_image_match_the_hand_counts(guide_file, name):
    flags, expected = HAND_COUNTS[name]
    assert calls_of(guide_file, *flags) == expected


def test_calls_without_cfg_or_guide(guide_file):
    assert calls_of(guide_file, cfg=False) == Calls(28, 2, 5, 2, 5, 2)  # one UNet pass a step
    assert calls_of(guide_file, "--guidance", "none", has_guide=False) == Calls(50, 0, 1, 0, 0, 0)  # nothing to score


def test_calls_average_the_images_own_strengths(guide_file):
    job = resolve(expand.parse_config(["-d", "digits", "--model", "m", "--guidance", "none", "--strength_choices",
                                       "1.0", "0.5"]))
    assert cost_calls.count_calls(job, cfg=True, has_guide=False, strengths=[1.0, 1.0, 1.0, 0.5]).unet_forward == 87.5
