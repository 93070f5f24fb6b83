"""The rows the benchmark specs here share; each name (its folders) is written once, here.

A row with the same name in two specs of one dataset is the same runs (expanded/<dataset>/<name>/seed<r>/), so a
second benchmark reuses what the first made; its expand.py flags must then be the same (expand.py refuses to resume
a folder made with other settings).
"""

from distdiff.jobs.spec import Augmentation, Experiment, Grid

# The authors' code's behaviour where this repository's defaults differ (docs/METHOD.md#differences-from-the-paper-
# and-the-authors-code): the guide's raw input, no feature normalisation inside transform guidance, agglomerative
# clustering.
AUTHORS_FLAGS = ("--raw_guide_input", "--no_transform_feature_norm", "--cluster", "agglomerative")
SELECT = ("--guidance", "none", "--candidates", "4", "--select")
DIRECT_P2 = ("--guidance", "direct", "--guidance_period", "2")  # the paper's direct-guidance ablation
DIRECT_P5_LINEAR = ("--guidance", "direct", "--guidance_period", "5", "--rho_schedule", "linear")

SD = Experiment("sd", "SD img2img", ("--guidance", "none"))
DISTDIFF = Experiment("distdiff", "DistDiff, this repository's defaults", ())
DISTDIFF_AUTHORS = Experiment("distdiff_authors", "DistDiff, the authors' code's settings", AUTHORS_FLAGS)
SELECT_PROBABILITY = Experiment("select_probability", "SD img2img, best of 4 by the guide's probability",
                                (*SELECT, "probability"))
# The paper's ablations (its prototype-level and guidance-type tables) and a train-time augmentation baseline.
AUTOAUGMENT = Augmentation("autoaugment", "AutoAugment (no expansion)", "autoaugment")
CLASS_ONLY = Experiment("distdiff_class", "DistDiff, class prototypes only", ("--optimize_targets", "global_prototype"))
GROUP_ONLY = Experiment("distdiff_group", "DistDiff, group prototypes only", ("--optimize_targets", "local_prototype"))
DIRECT = Experiment("distdiff_direct", "direct guidance", ("--guidance", "direct"))
RHO0 = Experiment("distdiff_rho0", "the random transform alone (rho 0)", ("--rho", "0"))

# Each option of ours at the setting docs/variants.md chose on val for some benchmark; the row is the one with the
# best replicate-1 validation accuracy here.
VARIANT = Grid("variant", "best option of ours", {
    "identity_r4_i3": ("--transform_init", "identity", "--transform_resolution", "4", "--transform_iters", "3"),
    "identity_r1_i3": ("--transform_init", "identity", "--transform_iters", "3"),
    "direct_p2": DIRECT_P2,
    "direct_p5_linear": DIRECT_P5_LINEAR,
})

# The paper's rivals (docs/METHOD.md: GIF-SD, DA-Fusion) at this repository's 5x and sampler defaults, and one
# combination neither has: DistDiff's guidance on DA-Fusion's learned class tokens.
GIF_SD = Experiment("gif_sd", "GIF-SD (guide in place of CLIP)", ("--guidance", "gif_sd"))
DA_FUSION_TOKENS = ("--class_tokens", "learned")
DA_FUSION = Experiment("dafusion", "DA-Fusion", ("--guidance", "none", *DA_FUSION_TOKENS, "--strength_choices", "1.0",
                                                 "0.75", "0.5", "0.25"),
                       train_flags=("--synthetic_probability", "0.5"))
DISTDIFF_TOKENS = Experiment("distdiff_tokens", "DistDiff on DA-Fusion's learned tokens", DA_FUSION_TOKENS)
RIVAL_ROWS = (GIF_SD, DA_FUSION, DISTDIFF_TOKENS)

# docs/PROTOCOL.md's comparison: the paper's method as this repository runs it and as the authors' code does, against
# plain SD img2img, the guide's selection and the best option of ours.
ROWS = (SD, DISTDIFF, DISTDIFF_AUTHORS, SELECT_PROBABILITY, VARIANT)
# The paper's main table and ablations at small scale (docs/RESULTS.md, docs/shift_benchmark.md).
PAPER_ROWS = (AUTOAUGMENT, SD, CLASS_ONLY, GROUP_ONLY, DISTDIFF, DIRECT, RHO0)
# Every option of ours, each a grid chosen on val (docs/variants.md).
VARIANT_ROWS = (
    SD, DISTDIFF,
    Grid("identity", "identity-start transform", {
        f"r{r}_i{i}": ("--transform_init", "identity", "--transform_resolution", str(r), "--transform_iters", str(i))
        for r in (1, 4) for i in (1, 3)}),
    Grid("direct", "direct guidance", {"p2": DIRECT_P2, "p5_linear": DIRECT_P5_LINEAR}),
    Grid("select", "SD img2img, best of 4 by the guide", {"energy": (*SELECT, "energy"),
                                                           "probability": (*SELECT, "probability")}),
    Grid("select_direct", "direct guidance, best of 4 by energy", {
        "p2": (*DIRECT_P2, "--candidates", "4", "--select", "energy"),
        "p5_linear": (*DIRECT_P5_LINEAR, "--candidates", "4", "--select", "energy")}),
)
