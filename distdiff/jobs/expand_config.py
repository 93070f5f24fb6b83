"""expand.py's settings (ExpandConfig) and the one step that turns them into a job with every value decided (ExpandJob).

The flags that set them are distdiff.jobs.expand_flags. A flag left unset means "the dataset's
registry entry decides" (model, guide, strength, M) or "derived" (output and cache folders);
`resolve` fills each in, checks every value (naming the flag and the fix) and builds the guidance
method once. distdiff.jobs.expand runs the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from distdiff.data.registry import dataset_spec
from distdiff.data.datasets import dataset_slug
from distdiff.method.gif import EPS as GIF_EPS, STEP_SIZE as GIF_STEP_SIZE, GifGuidance
from distdiff.method.guidance import EPS, GS, GUIDANCE_PERIOD, GUIDANCE_STEP, LS, RHO, Guidance
from distdiff.method.methods import GUIDANCE_METHODS
from distdiff.method.prototypes import DEFAULT_K
from distdiff.pipelines.sampling import (GUIDANCE_SCALE, PRECISION, START_INDEX, STEPS, STRENGTH, SamplingConfig,
                                         img2img_start_index)
from distdiff.report.feature_spaces import chosen_spaces, requested_spaces
from distdiff.runs.expansion import ExpansionError, global_shard
from distdiff.runs.recipe import ClassTokens, EnergyTerms, Recipe, Selection, StrengthDraw
from distdiff.training.experiment import GUIDE_LR, guide_checkpoint
from distdiff.utils.settings import RULES, OptionError, SettingError, check_settings

logger = logging.getLogger(__name__)

GUIDANCE = {"transform": "transform", "direct": "direct", "none": "none", "gif_sd": "gif_sd",
            "transform_guidance": "transform", "direct_guidance": "direct"}  # the authors' --guidance_type values
EXPERIMENT_NAMES = {"transform": "distdiff", "direct": "distdiff_direct", "none": "sd", "gif_sd": "gif_sd"}
# The authors' --optimize_targets: which prototype levels enter the energy, as (use D_c, use D_g).
OPTIMIZE_TARGETS = {"global_prototype-local_prototype": (True, True), "global_prototype": (True, False),
                    "local_prototype": (False, True)}
# expand.py flag (ExpandConfig field) -> the option it sets, per guidance method (--no_transform_feature_norm sets
# transform's `normalize` to its negation). DistDiff's two methods share the guidance window (M, period, rho).
WINDOW_FLAGS = {"guidance_step": "guidance_step", "guidance_period": "period", "rho": "rho"}
GUIDANCE_FLAGS = {"transform": WINDOW_FLAGS | {"constraint_value": "eps", "transform_init": "init",
                                               "transform_iters": "iterations", "transform_resolution": "resolution"},
                  "direct": WINDOW_FLAGS | {"rho_schedule": "rho_schedule"},
                  "gif_sd": {"gif_eps": "eps", "gif_step_size": "step_size", "gif_clip": "clip"}}
CLASS_TOKENS = ("names", "learned")  # --class_tokens: the dataset's class names, or DA-Fusion's learned tokens
# Options every method's messages may name, besides its own flags.
SAMPLER_FLAGS = {"steps": "--steps", "strength": "--strength"}
# Flags whose default depends on the dataset (its registry entry's expand_defaults), with the paper's general value.
DATASET_DEPENDENT = {"strength": STRENGTH, "guidance_step": GUIDANCE_STEP}
NUM_IMAGES_PER_PROMPT = 5  # the paper's 5x expansion (docs/METHOD.md#defaults)
SEED = 42  # the authors' generate_data.py default
BATCH_SIZE = 1  # the authors' expand_diff.sh (--train_batch_size 1); raise it on a large GPU


@dataclass(frozen=True)
class ExpandConfig:
    """One expansion job as the user asked for it: expand.py's flags, with the paper's defaults
    (docs/METHOD.md#defaults).

    None means "the dataset's registry entry decides" (model, guide, strength, M) or "derived"
    (output and cache folders); `resolve` decides them and returns an ExpandJob.
    """

    dataset: str
    model: str | None = None  # the registry's: SD v1.4, the embedded tiny SDs for digits / fashion-mnist
    guide_arch: str | None = None  # the registry's: resnet50, smallcnn for the small datasets
    guide_checkpoint: str | None = None  # what `train_original.py DATASET ARCH 0.1 False 0` writes
    output_dir: str | None = None  # expanded/<dataset>/<distdiff|sd|distdiff_direct>_<N>x
    num_images_per_prompt: int = NUM_IMAGES_PER_PROMPT  # the paper's 5x
    strength: float | None = None  # STRENGTH (0.5), or the dataset's paper value (PathMNIST: 0.2)
    steps: int = STEPS  # DDIM 50: the paper, generate_data.py
    guidance_scale: float = GUIDANCE_SCALE  # CFG 7.5: expand_diff.sh
    guidance_step: int | None = None  # M: GUIDANCE_STEP (20), or the dataset's paper value (PathMNIST: 10)
    guidance_period: int = GUIDANCE_PERIOD  # 2: the paper's ablation, expand_diff.sh
    rho: float = RHO  # 10: the paper's rho ablation
    constraint_value: float = EPS  # eps 0.2: expand_diff.sh
    K: int = DEFAULT_K  # group prototypes per class: the paper's K ablation
    cluster: str = "kmeans"  # the paper's k-means (the authors' code: agglomerative)
    gs: float = GS  # 1: expand_diff.sh
    ls: float = LS  # 1: expand_diff.sh
    optimize_targets: str = "global_prototype-local_prototype"  # both levels: the paper's default
    guidance: str = "transform"  # DistDiff; "direct" (ablation) or "none" (plain SD img2img)
    transform_init: str = "random"  # the paper's draw; "identity" is an option of ours
    transform_iters: int = 1  # the paper's single step; more is an option of ours
    transform_resolution: int = 1  # the paper's per-channel transform; R x R is an option of ours
    rho_schedule: str = "constant"  # direct guidance's rho over its steps: the paper's constant; others are ours
    gif_eps: float = GIF_EPS  # GIF-SD's L-inf radius around z_0: their README's 0.8 (CIFAR-100, Cars, DTD, ...)
    gif_step_size: float = GIF_STEP_SIZE  # GIF-SD's signed step on (e, b): 0.1 in their code
    gif_clip: str | None = None  # GIF-SD scores with the guide; their code with CLIP ViT-B/32 (a hub id or folder)
    class_tokens: str = "names"  # the paper's class names; "learned": DA-Fusion's textual-inversion tokens
    inversion_steps: int = ClassTokens.inversion_steps  # DA-Fusion's 1000 textual-inversion steps per class
    strength_choices: tuple[float, ...] | None = None  # one strength for all; DA-Fusion draws from 1.0 0.75 0.5 0.25
    candidates: int = 1  # the paper makes each image once; best of k by the guide is an option of ours
    select: str = "energy"  # how candidates are scored: SELECTION_SCORES
    no_transform_feature_norm: bool = False  # True: as the authors' code, no L2 norm inside transform guidance
    raw_guide_input: bool = False  # True: the authors' guide input exactly
    start_index: str = START_INDEX  # diffusers' img2img start index
    local_files_only: bool = False
    batch_size: int = BATCH_SIZE  # 1: expand_diff.sh
    precision: str = PRECISION  # fp16: generate_data.py (fp32 forced on CPU)
    gradient_checkpointing: bool = False
    seed: int = SEED  # 42: generate_data.py
    split: int = 0
    total_split: int = 1
    max_source_images: int | None = None
    data_root: str = "data"
    resolution: int | None = None  # the model's (512 for SD v1.4)
    crop: str = "center"
    cache_dir: str | None = None  # <data_root>/latent_cache
    no_energy_log: bool = False
    no_report: bool = False
    feature_space: tuple[str, ...] | None = None  # the report's spaces (None: every one available)
    inception_weights: str | None = None
    num_threads: int | None = None
    dry_run: bool = False  # print the cost (distdiff/jobs/cost.py) and stop: not part of the job or its recipe

    @property
    def method(self) -> str:
        """The guidance method: transform, direct or none (the authors' --guidance_type names mapped)."""
        return GUIDANCE[self.guidance]


@dataclass(frozen=True)
class ExpandJob:
    """One expansion job with every value decided: what `resolve` makes of the flags (ExpandConfig)."""

    dataset: str
    model: str  # hub id or local diffusers folder
    model_is_default: bool  # --model not given: the dataset's registry entry named it (a missing one is trained)
    guide_arch: str
    guide_checkpoint: str  # --guide_checkpoint or what train_original.py writes; absent only where none is needed
    check_arch: bool  # the user named -a, so the checkpoint must be of that architecture
    output_dir: Path
    cache_dir: Path  # the VAE latent cache
    data_root: str
    num_images_per_prompt: int
    sampling: SamplingConfig
    guidance: Guidance | None  # None: plain SD img2img
    energy: EnergyTerms
    selection: Selection
    tokens: ClassTokens
    strengths: StrengthDraw
    seed: int
    resolution: int | None  # None: the model's own, known only once it is loaded
    crop: str
    precision: str
    gradient_checkpointing: bool
    local_files_only: bool
    batch_size: int
    split: int
    total_split: int
    max_source_images: int | None  # None: every source image
    record_energy: bool
    report: bool
    report_spaces: list[str] | None  # the report's feature spaces; None: every one measurable here (or no report)
    inception_weights: str | None  # None: no InceptionV3 weights file, so no Inception feature space
    num_threads: int | None  # None: the scripts' shared default (distdiff.cli.configure_threads)

    @property
    def guide_weights(self) -> tuple[float, float]:
        """(gs, ls) as the guide's energy applies them."""
        return energy_weights(self.energy.optimize_targets, self.energy.gs, self.energy.ls)

    @property
    def gif_clip(self) -> str | None:
        """The CLIP model GIF-SD scores with (--gif_clip), or None (the guide scores, or the method is another)."""
        return self.guidance.clip if isinstance(self.guidance, GifGuidance) else None

    def recipe(self, *, resolution: int, dtype: str) -> Recipe:
        """What every image of OUT is made with (its seed aside), typed: distdiff/runs/recipe.py."""
        guide = Path(self.guide_checkpoint)
        return Recipe(dataset=self.dataset, model=self.model, resolution=resolution, crop=self.crop, dtype=dtype,
                      sampling=self.sampling, guidance=self.guidance, energy=self.energy, selection=self.selection,
                      tokens=self.tokens, strengths=self.strengths, seed=self.seed, guide_checkpoint=str(guide.resolve()) if guide.is_file() else None)


def energy_weights(optimize_targets: str, gs: float, ls: float) -> tuple[float, float]:
    """(gs, ls) with 0 for a prototype level that --optimize_targets leaves out of the energy."""
    use_dc, use_dg = OPTIMIZE_TARGETS[optimize_targets]
    return gs if use_dc else 0.0, ls if use_dg else 0.0


def guidance_method(flags: ExpandConfig) -> Guidance | None:
    """The guidance the pipeline runs, built from the flags (None for plain SD img2img); the method checks its
    options and an OptionError is said with the flags' names."""
    if flags.method == "none":
        return None
    options = {option: getattr(flags, flag) for flag, option in GUIDANCE_FLAGS[flags.method].items()}
    if flags.method == "transform":
        options["normalize"] = not flags.no_transform_feature_norm
    try:
        return GUIDANCE_METHODS[flags.method](**options)
    except OptionError as err:
        raise SettingError(err.render(option_flags(flags.method))) from err


def option_flags(method: str) -> dict[str, str]:
    """How `method`'s options are named to the user of expand.py: its flags."""
    own = {option: f"--{flag}" for flag, option in GUIDANCE_FLAGS[method].items()}
    return own | SAMPLER_FLAGS | ({"normalize": "--no_transform_feature_norm"} if method == "transform" else {})


def validate(flags: ExpandConfig) -> Guidance | None:
    """Reject flag values that cannot work, naming the flag and the fix (expand.py's own flags: distdiff.utils.settings;
    a guidance method's: its constructor, said with the flags); returns the guidance method, checked.

    `flags` has the dataset's defaults filled in: strength and M are checked against the schedule."""
    check_settings(**{name: getattr(flags, name, None) for name in RULES})
    mine = GUIDANCE_FLAGS.get(flags.method, {})
    defaults = dataset_defaults(flags.dataset)
    for flag in dict.fromkeys(f for names in GUIDANCE_FLAGS.values() for f in names):
        if flags.method == "none" and flag in WINDOW_FLAGS:
            continue  # plain SD img2img has always ignored the window, so one flag set serves every compared method
        if flag not in mine and getattr(flags, flag) != defaults.get(flag, getattr(ExpandConfig, flag)):
            owners = " or ".join(m for m, names in GUIDANCE_FLAGS.items() if flag in names)
            raise ExpansionError(f"--{flag} {getattr(flags, flag)} is an option of --guidance {owners}; "
                                 f"add --guidance {owners.split(' or ')[0]} or drop it.")
    for strength in flags.strength_choices or ():
        if not 0.0 < strength <= 1.0:
            raise ExpansionError(f"--strength_choices {strength:g} must be in (0, 1].")
    if flags.inversion_steps < 1:
        raise ExpansionError(f"--inversion_steps must be at least 1, got {flags.inversion_steps}.")
    if flags.inversion_steps != ExpandConfig.inversion_steps and flags.class_tokens != "learned":
        raise ExpansionError(f"--inversion_steps {flags.inversion_steps} sets how --class_tokens learned learns its "
                             f"tokens; add --class_tokens learned or drop it.")
    guidance = guidance_method(flags)
    if guidance is not None:  # the guidance schedule flags are unused by plain SD
        for strength in flags.strength_choices or (flags.strength,):
            try:
                guidance.check_schedule(steps=flags.steps,
                                        start=img2img_start_index(flags.steps, strength, flags.start_index))
            except OptionError as err:
                raise SettingError(err.render(option_flags(flags.method))) from err
    global_shard(flags.split, flags.total_split)  # refuses a --split outside [0, --total_split)
    if guidance is not None and guidance.uses_energy and not any(
            w > 0 for w in energy_weights(flags.optimize_targets, flags.gs, flags.ls)):
        raise ExpansionError("the energy has no term left (--gs/--ls are 0 or excluded by "
                             "--optimize_targets); give one a positive weight, or use --guidance none.")
    if not flags.no_report:  # a report space that cannot be measured is said before the expansion, not after it
        chosen_spaces(requested_spaces(flags.feature_space), flags.inception_weights)
    return guidance


def guide_file(flags: ExpandConfig, guide_arch: str) -> str:
    """--guide_checkpoint, else what `train_original.py DATASET ARCH 0.1 False 0` writes; a missing one is refused
    where a guide is needed (guidance, --candidates, or a guide the user named), and only warned of by --dry_run."""
    default = guide_checkpoint(flags.dataset, guide_arch)
    guide = flags.guide_checkpoint or str(default)
    needs_guide = flags.method != "none" or flags.candidates > 1 or flags.guide_checkpoint is not None
    if needs_guide and not Path(guide).is_file():
        message = (f"guide checkpoint {guide} not found. Train the guide with `python train_original.py "
                   f"{flags.dataset} {guide_arch} {GUIDE_LR:g} False 0` (writes {default}) or pass --guide_checkpoint.")
        if not flags.dry_run:
            raise ExpansionError(message)
        logger.warning("%s The dry run goes on as if it were there.", message)
    return guide


def dataset_defaults(dataset: str) -> dict:
    """The values of DATASET_DEPENDENT's flags for `dataset`: its registry entry's, else the paper's."""
    overrides = dataset_spec(dataset).expand_defaults
    return {name: overrides.get(name, default) for name, default in DATASET_DEPENDENT.items()}


def resolve(config: ExpandConfig) -> ExpandJob:
    """The flags' values -> the job: the dataset's defaults filled in, every value checked, the paths decided."""
    spec = dataset_spec(config.dataset)
    flags = replace(config, **{name: value for name, value in dataset_defaults(config.dataset).items()
                               if getattr(config, name) is None})
    guidance = validate(flags)
    guide_arch = flags.guide_arch or spec.guide_arch
    method_folder = f"{EXPERIMENT_NAMES[flags.method]}_{flags.num_images_per_prompt}x"
    return ExpandJob(
        dataset=flags.dataset, model=spec.sd_model if flags.model is None else flags.model,
        model_is_default=flags.model is None, guide_arch=guide_arch, guide_checkpoint=guide_file(flags, guide_arch),
        check_arch=flags.guide_arch is not None,
        output_dir=Path(flags.output_dir or Path("expanded") / dataset_slug(flags.dataset) / method_folder),
        cache_dir=Path(flags.cache_dir or Path(flags.data_root) / "latent_cache"), data_root=flags.data_root,
        num_images_per_prompt=flags.num_images_per_prompt,
        sampling=SamplingConfig(strength=flags.strength, num_inference_steps=flags.steps,
                                guidance_scale=flags.guidance_scale, start_index=flags.start_index),
        guidance=guidance,
        energy=EnergyTerms(K=flags.K, cluster=flags.cluster, gs=flags.gs, ls=flags.ls,
                           optimize_targets=flags.optimize_targets, raw_guide_input=flags.raw_guide_input),
        selection=Selection(candidates=flags.candidates, select=flags.select),
        tokens=ClassTokens(learned=flags.class_tokens == "learned", inversion_steps=flags.inversion_steps),
        strengths=StrengthDraw(choices=tuple(flags.strength_choices or ())), seed=flags.seed,
        resolution=flags.resolution, crop=flags.crop, precision=flags.precision,
        gradient_checkpointing=flags.gradient_checkpointing, local_files_only=flags.local_files_only,
        batch_size=flags.batch_size, split=flags.split, total_split=flags.total_split,
        max_source_images=flags.max_source_images, record_energy=not flags.no_energy_log, report=not flags.no_report,
        report_spaces=requested_spaces(flags.feature_space) if not flags.no_report else None,
        inception_weights=flags.inception_weights,
        num_threads=flags.num_threads)
