"""One expansion job as expand.py runs it: its typed config (ExpandConfig), flags, per-dataset defaults,
validation, guide, the run.

The mechanisms (work list, shards, manifest, resume, atomic files) live in distdiff.runs.expansion;
this module turns expand.py's arguments into one call of `expansion.run_expansion` for the
shard of this process (`--split` of `--total_split` jobs, each divided among accelerate processes).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import PartialState

from distdiff.runs import expansion
from distdiff.data.augment import eval_transform
from distdiff.cli import add_threads_argument, configure_threads
from distdiff.models.classifiers import ClassifierError, load_classifier
from distdiff.data.datasets import DatasetError, dataset_slug
from distdiff.training.experiment import GUIDE_LR, guide_checkpoint
from distdiff.utils.files import is_environment_error
from distdiff.method.direct import RhoSchedule
from distdiff.method.guidance import EPS, GS, GUIDANCE_PERIOD, GUIDANCE_STEP, LS, RHO, Guidance, GuideEnergy
from distdiff.method.methods import GUIDANCE_METHODS
from distdiff.method.transform import TransformInit
from distdiff.method.observers import SELECTION_SCORES
from distdiff.runs.latent_cache import LatentCache
from distdiff.runs.recipe import EnergyTerms, Recipe, Selection, recipe_defaults, recipe_params
from distdiff.runs.manifest import MANIFEST, summarize_manifest
from distdiff.method.prototypes import CLUSTERING_METHODS, DEFAULT_K, compute_prototypes
from distdiff.data.registry import dataset_spec, load_dataset
from distdiff.utils.settings import RULES, OptionError, SettingError, check_settings
from distdiff.report.feature_spaces import add_feature_space_argument, chosen_spaces, requested_spaces
from distdiff.report.build import REPORT_JSON, build_report
from distdiff.report.metrics import ReportError
from distdiff.pipelines.sampling import (GUIDANCE_SCALE, PRECISION, PRECISIONS, SOURCE_CROPS, START_INDEX,
                                         START_INDEX_FORMULAS, STEPS, STRENGTH, SamplingConfig, encode_prompts,
                                         img2img_start_index)
from distdiff.pipelines.distdiff_img2img import load_stable_diffusion

logger = logging.getLogger(__name__)

GUIDANCE = {"transform": "transform", "direct": "direct", "none": "none",
            "transform_guidance": "transform", "direct_guidance": "direct"}  # the authors' --guidance_type values
EXPERIMENT_NAMES = {"transform": "distdiff", "direct": "distdiff_direct", "none": "sd"}
# The authors' --optimize_targets: which prototype levels enter the energy, as (use D_c, use D_g).
OPTIMIZE_TARGETS = {"global_prototype-local_prototype": (True, True), "global_prototype": (True, False),
                    "local_prototype": (False, True)}
# expand.py flag (ExpandConfig field) -> the guidance method's option it sets: "*" for every method's, then each
# method's own (--no_transform_feature_norm sets transform's `normalize` to its negation).
GUIDANCE_FLAGS = {"*": {"guidance_step": "guidance_step", "guidance_period": "period", "rho": "rho"},
                  "transform": {"constraint_value": "eps", "transform_init": "init", "transform_iters": "iterations",
                                "transform_resolution": "resolution"},
                  "direct": {"rho_schedule": "rho_schedule"}}
# How an option is named to the user of expand.py: its flag.
OPTION_FLAGS = {option: f"--{flag}" for flags in GUIDANCE_FLAGS.values() for flag, option in flags.items()} | {
    "normalize": "--no_transform_feature_norm", "steps": "--steps", "strength": "--strength"}
NUM_IMAGES_PER_PROMPT = 5  # the paper's 5x expansion (docs/METHOD.md#defaults)
SEED = 42  # the authors' generate_data.py default
BATCH_SIZE = 1  # the authors' expand_diff.sh (--train_batch_size 1); raise it on a large GPU
FEATURE_BATCH_SIZE = 64  # images per guide forward when computing prototypes


@dataclass(frozen=True)
class ExpandConfig:
    """One expansion job: expand.py's flags, with the paper's defaults (docs/METHOD.md#defaults).

    None means "the dataset's registry entry decides" (model, guide, strength, M) or "derived"
    (output and cache folders); `resolve` fills them in.
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

    @property
    def method(self) -> str:
        """The guidance method: transform, direct or none (the authors' --guidance_type names mapped)."""
        return GUIDANCE[self.guidance]

    def sampling(self) -> SamplingConfig:
        """The img2img settings the pipeline takes."""
        return SamplingConfig(strength=self.strength, num_inference_steps=self.steps,
                              guidance_scale=self.guidance_scale, start_index=self.start_index)

    def guidance_method(self) -> Guidance | None:
        """The guidance the pipeline runs, built from the flags (None for plain SD img2img); the method checks its
        options and an OptionError is said with the flags' names."""
        if self.method == "none":
            return None
        options = {option: getattr(self, flag) for flag, option in GUIDANCE_FLAGS["*"].items()}
        options.update({option: getattr(self, flag) for flag, option in GUIDANCE_FLAGS[self.method].items()})
        if self.method == "transform":
            options["normalize"] = not self.no_transform_feature_norm
        try:
            return GUIDANCE_METHODS[self.method](**options)
        except OptionError as err:
            raise SettingError(err.render(OPTION_FLAGS)) from err

    def recipe(self, *, resolution: int, dtype: str) -> Recipe:
        """What every image of OUT is made with (its seed aside), typed: distdiff/runs/recipe.py."""
        guide = self.guide_checkpoint
        return Recipe(dataset=self.dataset, model=self.model, resolution=resolution, crop=self.crop, dtype=dtype,
                      sampling=self.sampling(), guidance=self.guidance_method(),
                      energy=EnergyTerms(K=self.K, cluster=self.cluster, gs=self.gs, ls=self.ls,
                                         optimize_targets=self.optimize_targets, raw_guide_input=self.raw_guide_input),
                      selection=Selection(candidates=self.candidates, select=self.select), seed=self.seed,
                      guide_checkpoint=str(Path(guide).resolve()) if guide and Path(guide).is_file() else None)

    def generation_params(self, *, resolution: int, dtype: str) -> dict:
        """OUT/expand_config.json and each manifest line's params: the recipe, flattened (recipe_params)."""
        return recipe_params(self.recipe(resolution=resolution, dtype=dtype))


def add_expand_arguments(p: argparse.ArgumentParser) -> None:
    """expand.py's flags (the authors' names as aliases): one per ExpandConfig field, with its default."""
    D = ExpandConfig
    p.add_argument("-d", "--dataset", required=True, help="digits, imagefolder:PATH or a registered dataset")
    p.add_argument("--model", "--pretrained_model_name_or_path", dest="model", default=None,
                   help="SD hub id or local diffusers folder (default: the dataset's registry entry, "
                        "distdiff/data/registry.py: SD v1.4, the embedded tiny SD for digits)")
    p.add_argument("-a", "--guide_arch", "--arch", dest="guide_arch", default=None,
                   help="guide architecture (default: the dataset's registry entry: resnet50, smallcnn for digits)")
    p.add_argument("--guide_checkpoint", "--encoder_weight_path", dest="guide_checkpoint", default=None,
                   help="guide model_best.pth.tar (default: what `train_original.py DATASET ARCH 0.1 False 0` "
                        "writes; that command with --print_checkpoint prints it)")
    p.add_argument("--output_dir", default=None, help="default: expanded/<dataset>/<distdiff|sd|...>_<N>x")
    p.add_argument("--num_images_per_prompt", type=int, default=D.num_images_per_prompt, help="copies per image")
    p.add_argument("--strength", type=float, default=None,
                   help=f"img2img strength in (0, 1] (default: {STRENGTH}; the dataset's paper value, e.g. 0.2 for pathmnist)")
    p.add_argument("--steps", type=int, default=D.steps, help="DDIM steps T")
    p.add_argument("--guidance_scale", type=float, default=D.guidance_scale, help="classifier-free guidance")
    p.add_argument("--guidance_step", type=int, default=None,
                   help=f"M: guide at schedule index T-M (default: {GUIDANCE_STEP}; the dataset's paper value, e.g. 10 "
                        f"for pathmnist)")
    p.add_argument("--guidance_period", type=int, default=D.guidance_period, help="look-ahead / guided steps")
    p.add_argument("--rho", type=float, default=D.rho, help="guidance learning rate")
    p.add_argument("--constraint_value", type=float, default=D.constraint_value, help="L-inf radius eps around z_t")
    p.add_argument("--K", type=int, default=D.K, help="group prototypes per class")
    p.add_argument("--cluster", choices=sorted(CLUSTERING_METHODS), default=D.cluster,
                   help="grouping (default k-means; the authors' code: agglomerative)")
    p.add_argument("--gs", type=float, default=D.gs, help="weight of the class energy D_c")
    p.add_argument("--ls", type=float, default=D.ls, help="weight of the group energy D_g")
    p.add_argument("--optimize_targets", choices=sorted(OPTIMIZE_TARGETS), default=D.optimize_targets,
                   help="prototype levels in the energy (the authors' flag; one level sets the other weight to 0)")
    p.add_argument("--guidance", "--guidance_type", dest="guidance", choices=sorted(GUIDANCE), default=D.guidance,
                   help="transform (DistDiff), direct (ablation) or none (plain SD img2img)")
    p.add_argument("--transform_init", choices=[c.value for c in TransformInit], default=D.transform_init,
                   help="where transform guidance's per-channel (e, b) start: the paper's random draw, or the "
                        "identity (an option of ours: no blind draw; docs/METHOD.md#transform-guidance)")
    p.add_argument("--transform_iters", type=int, default=D.transform_iters,
                   help="gradient steps on (e, b) at the guided step (the paper: 1; more is an option of ours)")
    p.add_argument("--transform_resolution", type=int, default=D.transform_resolution,
                   help="transform guidance's scale/bias: one per latent channel (1, the paper) or an R x R field "
                        "per channel, nearest-upsampled to the latent (an option of ours)")
    p.add_argument("--rho_schedule", choices=[c.value for c in RhoSchedule], default=D.rho_schedule,
                   help="direct guidance's step size over its --guidance_period steps: the paper's constant rho, or "
                        "rho decaying linearly / by a half cosine from rho toward 0 (options of ours; "
                        "docs/METHOD.md#direct-guidance)")
    p.add_argument("--candidates", type=int, default=D.candidates,
                   help="make each image this many times (own seeds) and keep the best by --select (an option of "
                        "ours, k times the sampling cost; also with --guidance none; docs/METHOD.md#selection)")
    p.add_argument("--select", choices=sorted(SELECTION_SCORES), default=D.select,
                   help="how --candidates are scored by the guide: energy gs*D_c + ls*D_g (lowest kept) or "
                        "probability of the intended class (highest kept)")
    p.add_argument("--no_transform_feature_norm", action="store_true",
                   help="as the authors' code: do not L2-normalise the guide features inside transform guidance")
    p.add_argument("--raw_guide_input", action="store_true",
                   help="the authors' guide input exactly: the decoded [-1,1] image, no mean/std, resized bicubic "
                        "(no antialias) to 224 px, instead of the prototypes' preprocessing")
    p.add_argument("--start_index", choices=sorted(START_INDEX_FORMULAS), default=D.start_index,
                   help="first img2img step: diffusers' T - int(T*s) or the authors' int((1-s)*T); "
                        "they differ at s=0.8 and 0.9")
    p.add_argument("--local_files_only", action="store_true",
                   help="never download --model: a hub id must already be in the Hugging Face cache")
    p.add_argument("--batch_size", "--train_batch_size", dest="batch_size", type=int, default=D.batch_size,
                   help="images per sampling batch (sources and copies mixed)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=D.precision, help="fp32 is forced on CPU")
    p.add_argument("--gradient_checkpointing", action="store_true", help="less memory for the guidance backward")
    p.add_argument("--seed", type=int, default=D.seed, help="run seed; each image's seed hashes it with its name")
    p.add_argument("--split", type=int, default=D.split, help="which of --total_split independent jobs this is")
    p.add_argument("--total_split", type=int, default=D.total_split, help="number of independent jobs (e.g. one per GPU)")
    p.add_argument("--max_source_images", type=int, default=None, help="expand only N source images (smoke runs)")
    p.add_argument("--data_root", default=D.data_root, help="folder holding the datasets")
    p.add_argument("--resolution", type=int, default=None, help="default: the model's (512 for SD v1.4)")
    p.add_argument("--crop", choices=sorted(SOURCE_CROPS), default=D.crop, help="source image to a square")
    p.add_argument("--cache_dir", default=None, help="VAE latent cache (default: <data_root>/latent_cache)")
    p.add_argument("--no_energy_log", action="store_true",
                   help="skip measuring D_c/D_g for the manifest. Their cost per guided image: one extra "
                        "classifier-free-guided UNet step (26 instead of the 25 sampler steps at the default "
                        "strength 0.5 and 50 steps), two VAE decodes and three guide passes; per unguided image one "
                        "guide pass (EnergyRecorder)")
    p.add_argument("--no_report", action="store_true",
                   help="skip writing OUT/report.html and OUT/report.json at the end (scripts/report.py rebuilds them)")
    add_feature_space_argument(p)
    p.add_argument("--inception_weights", default=None, metavar="FILE",
                   help="local InceptionV3 weights (weights-inception-2015-12-05-6726825d.pth): the report measures "
                        "FID/KID in Inception's features too")
    add_threads_argument(p)


# Flags whose default depends on the dataset (its registry entry's expand_defaults), with the paper's general value.
DATASET_DEPENDENT = {"strength": STRENGTH, "guidance_step": GUIDANCE_STEP}


def apply_dataset_defaults(config: ExpandConfig) -> ExpandConfig:
    """`config` with the settings left unset filled from the dataset's registry entry, else the paper's defaults."""
    overrides = dataset_spec(config.dataset).expand_defaults
    return replace(config, **{name: overrides.get(name, default) for name, default in DATASET_DEPENDENT.items()
                              if getattr(config, name) is None})


def validate(config: ExpandConfig) -> None:
    """Reject flag values that cannot work, naming the flag and the fix (expand.py's own flags: distdiff.utils.settings;
    a guidance method's: its constructor, said with the flags)."""
    check_settings(**{name: getattr(config, name, None) for name in RULES})
    for method, flags in GUIDANCE_FLAGS.items():
        for flag in flags:
            if method not in ("*", config.method) and getattr(config, flag) != getattr(ExpandConfig, flag):
                raise expansion.ExpansionError(f"--{flag} {getattr(config, flag)} is an option of --guidance {method}; "
                                               f"add --guidance {method} or drop it.")
    guidance = config.guidance_method()
    if guidance is not None:  # the guidance schedule flags are unused by plain SD
        try:
            guidance.check_schedule(steps=config.steps,
                                    start=img2img_start_index(config.steps, config.strength, config.start_index))
        except OptionError as err:
            raise SettingError(err.render(OPTION_FLAGS)) from err
    if not 0 <= config.split < config.total_split:
        raise expansion.ExpansionError(f"--split must be in [0, --total_split={config.total_split}), "
                                       f"got {config.split}.")
    use_dc, use_dg = OPTIMIZE_TARGETS[config.optimize_targets]
    if config.method != "none" and not (use_dc and config.gs > 0 or use_dg and config.ls > 0):
        raise expansion.ExpansionError("the energy has no term left (--gs/--ls are 0 or excluded by "
                                       "--optimize_targets); give one a positive weight, or use --guidance none.")
    if not config.no_report:  # a report space that cannot be measured is said before the expansion, not after it
        chosen_spaces(requested_spaces(config.feature_space), config.inception_weights)


def resolve_paths(config: ExpandConfig) -> ExpandConfig:
    """`config` with the per-dataset defaults of --model, -a, --guide_checkpoint, --output_dir and --cache_dir."""
    slug = dataset_slug(config.dataset)
    spec = dataset_spec(config.dataset)
    model = config.model
    if model is None:
        model = spec.sd_model
        if Path(model).is_absolute() and not Path(model).is_dir():
            from distdiff.tiny_sd.train import train_command  # the recipe writing this folder (shifted digits: digits')

            raise expansion.ExpansionError(f"the default model for {config.dataset}, {model}, does not exist; "
                                           f"train it with `{train_command(model)}` or pass --model.")
    guide_arch = config.guide_arch or spec.guide_arch
    default_guide = guide_checkpoint(config.dataset, guide_arch)
    guide = config.guide_checkpoint or str(default_guide)
    needs_guide = config.method != "none" or config.candidates > 1 or config.guide_checkpoint is not None
    if not Path(guide).is_file() and needs_guide:
        raise expansion.ExpansionError(
            f"guide checkpoint {guide} not found. Train the guide with `python train_original.py "
            f"{config.dataset} {guide_arch} {GUIDE_LR:g} False 0` (writes {default_guide}) "
            f"or pass --guide_checkpoint.")
    output_dir = config.output_dir or str(Path("expanded") / slug /
                                          f"{EXPERIMENT_NAMES[config.method]}_{config.num_images_per_prompt}x")
    return replace(config, model=model, guide_arch=guide_arch, guide_checkpoint=guide, output_dir=output_dir,
                   cache_dir=config.cache_dir or str(Path(config.data_root) / "latent_cache"))


def load_guide(config: ExpandConfig, train, state, device, *, check_arch: bool):
    """The guide with its prototypes (computed once into OUT), or None for --guidance none without a guide.

    `check_arch`: the user named -a, so the checkpoint must be of that architecture."""
    if not Path(config.guide_checkpoint).is_file():
        logger.info("no guide checkpoint at %s: plain SD run, D_c/D_g not recorded", config.guide_checkpoint)
        return None
    model, info = load_classifier(config.guide_checkpoint, device,
                                  expected_arch=config.guide_arch if check_arch else None)
    if list(info["classes"]) != list(train.classes):
        raise expansion.ExpansionError(f"guide {config.guide_checkpoint} was trained on classes "
                                       f"{info['classes'][:5]}... of {info['dataset']}, not on {config.dataset}'s; "
                                       f"pass its own guide.")
    stat = Path(config.guide_checkpoint).stat()
    metadata = {"dataset": config.dataset, "split": "train",
                "guide_checkpoint": str(Path(config.guide_checkpoint).resolve()),
                "guide_file": f"{stat.st_size}:{stat.st_mtime_ns}", "k": config.K, "method": config.cluster,
                "seed": config.seed,
                "image_size": info["image_size"], "mean": list(info["mean"]), "std": list(info["std"])}

    def compute(metadata):
        data = train.with_transform(eval_transform(info["image_size"], info["mean"], info["std"]))
        return compute_prototypes(model, data, k=config.K, method=config.cluster, seed=config.seed,
                                  batch_size=FEATURE_BATCH_SIZE, device=device, metadata=metadata)

    prototypes = expansion.shared_prototypes(state, Path(config.output_dir), metadata, compute)
    use_dc, use_dg = OPTIMIZE_TARGETS[config.optimize_targets]
    return GuideEnergy(model, prototypes.to(device), image_size=info["image_size"], mean=info["mean"],
                       std=info["std"], raw_input=config.raw_guide_input, gs=config.gs if use_dc else 0.0,
                       ls=config.ls if use_dg else 0.0)


def write_run_report(config: ExpandConfig, out: Path, guide_checkpoint: str | None, device) -> None:
    """OUT/report.html + report.json; a report that cannot be made is a warning, the images stay valid."""
    logger.info("the work list is finished: writing its report in %s", out)
    try:
        build_report([out], data_root=config.data_root, dataset=config.dataset, guide_checkpoint=guide_checkpoint,
                     feature_spaces=requested_spaces(config.feature_space), inception_weights=config.inception_weights,
                     device=device)
    except (ReportError, DatasetError, ClassifierError) as err:
        logger.warning("no report written for %s: %s. Fix that, then run `python scripts/report.py %s`.", out, err, out)


def resolve(config: ExpandConfig) -> ExpandConfig:
    """The flags' values -> the job: the dataset's defaults filled in, every value checked, the paths decided."""
    job = apply_dataset_defaults(config)
    validate(job)
    return resolve_paths(job)


def start_process(job: ExpandConfig) -> PartialState:
    """This process's place among accelerate's (one process without a launcher), its CPU threads set."""
    if not torch.cuda.is_available():
        logger.info("using %d CPU threads", configure_threads(job.num_threads))
    # Without CUDA, accelerate only forms a (gloo) process group when told it runs on CPU.
    return PartialState(cpu=not torch.cuda.is_available())


@dataclass(frozen=True)
class Work:
    """The whole work list (every --split job builds it, so each refuses the same source and the one that finds
    it finished writes the report) and this process's shard of it."""

    all_items: list
    items: list
    shard: int
    num_shards: int


def plan_work(job: ExpandConfig, train, state: PartialState) -> Work:
    """The work list of `job` over the train split `train`, and this process's shard."""
    selected = expansion.select_sources(train, job.max_source_images)
    work_list = expansion.work_items(train, selected, num_copies=job.num_images_per_prompt, seed=job.seed)
    shard, num_shards = expansion.global_shard(job.split, job.total_split, state.process_index, state.num_processes)
    ours = set(expansion.shard_sources(selected, shard=shard, num_shards=num_shards))
    return Work(work_list, [it for it in work_list if it.source_index in ours], shard, num_shards)


def load_model(job: ExpandConfig, device):
    """The pipeline of --model on `device`, and the image side it generates (--resolution or the model's)."""
    try:
        sd = load_stable_diffusion(job.model, device=device, precision=job.precision,
                                   gradient_checkpointing=job.gradient_checkpointing,
                                   local_files_only=job.local_files_only)
    except OSError as err:  # diffusers' "cannot find the model" is an OSError without errno
        if is_environment_error(err):
            raise
        raise expansion.ExpansionError(str(err)) from err
    resolution = job.resolution or sd.default_resolution
    if resolution % sd.vae_scale_factor:
        raise expansion.ExpansionError(f"--resolution {resolution} must be a multiple of the VAE's factor "
                                       f"{sd.vae_scale_factor}.")
    return sd, resolution


def run(config: ExpandConfig) -> dict:
    """One expansion job (this process's shard); returns counts, timing and the manifest's means."""
    job = resolve(config)
    state = start_process(job)
    train = load_dataset(job.dataset, "train", root=job.data_root)
    work = plan_work(job, train, state)
    sd, resolution = load_model(job, state.device)
    recipe = job.recipe(resolution=resolution, dtype=str(sd.dtype).removeprefix("torch."))
    params = recipe_params(recipe)
    out = Path(job.output_dir)
    # before any work, so a mismatched resume fails fast
    expansion.ensure_run_config(out, params, added_later=recipe_defaults(recipe))
    expansion.check_copies(out, job.num_images_per_prompt)
    guide = load_guide(job, train, state, state.device, check_arch=config.guide_arch is not None)
    cache = LatentCache(job.cache_dir, sd, model=job.model, resolution=resolution, crop=job.crop,
                        precision=params["dtype"])
    prompts = encode_prompts(sd, [train.prompt(c) for c in range(len(train.classes))])
    begin = time.perf_counter()
    written = expansion.run_expansion(
        sd, train, work.items, out_dir=out, prompts=prompts, cache=cache, params=params, sampling=job.sampling(),
        guidance=job.guidance_method(), guide=guide, batch_size=job.batch_size, record_energy=not job.no_energy_log,
        progress=state.is_local_main_process, shard=work.shard, num_shards=work.num_shards, candidates=job.candidates,
        select=job.select)
    seconds = time.perf_counter() - begin
    state.wait_for_everyone()
    # The ranks' shared work ends here. The report is one process's job, and torchmetrics' FID/KID would otherwise
    # try to sync their states with ranks that have left (a crash in gloo, a hang in NCCL).
    state.destroy_process_group()
    # One process per launch asks (after the barrier, so for all of its ranks); the turn marker picks among launches.
    if not job.no_report and state.is_main_process and expansion.report_due(
            out, work.all_items, report=out / REPORT_JSON, made_images=written > 0):
        write_run_report(job, out, params["guide_checkpoint"], state.device)
    return {"output_dir": str(out), "shard": f"{work.shard}/{work.num_shards}", "images": len(work.items),
            "written": written, "seconds": seconds, "summary": summarize_manifest(out / MANIFEST)}
