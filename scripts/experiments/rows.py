"""The rows every benchmark spec here shares: the issue's protocol comparison of DistDiff (docs/PROTOCOL.md)."""

from distdiff.jobs.compare import Experiment, Grid

# The authors' code's behaviour where this repository's defaults differ (docs/METHOD.md#differences-from-the-paper-
# and-the-authors-code): the guide's raw input, no feature normalisation inside transform guidance, agglomerative
# clustering.
AUTHORS_FLAGS = ("--raw_guide_input", "--no_transform_feature_norm", "--cluster", "agglomerative")
SELECT_PROBABILITY = ("--guidance", "none", "--candidates", "4", "--select", "probability")

ROWS = (
    Experiment("sd", "SD img2img", ("--guidance", "none")),
    Experiment("distdiff", "DistDiff, this repository's defaults", ()),
    Experiment("distdiff_authors", "DistDiff, the authors' code's settings", AUTHORS_FLAGS),
    Experiment("select_probability", "SD img2img, best of 4 by the guide's probability", SELECT_PROBABILITY),
    # Each option of ours at the setting docs/variants.md chose on val for some benchmark; the row is the one with
    # the best replicate-1 validation accuracy here.
    Grid("variant", "best option of ours", {
        "identity_r4_i3": ("--transform_init", "identity", "--transform_resolution", "4", "--transform_iters", "3"),
        "identity_r1_i3": ("--transform_init", "identity", "--transform_iters", "3"),
        "direct_p2": ("--guidance", "direct", "--guidance_period", "2"),
        "direct_p5_linear": ("--guidance", "direct", "--guidance_period", "5", "--rho_schedule", "linear"),
    }),
)
