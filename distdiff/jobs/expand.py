"""One expansion job as expand.py runs it: the resolved job (distdiff.jobs.expand_config) run as named stages.

The mechanisms (work list, shards, manifest, resume, atomic files) live in distdiff.runs.expansion;
this module turns the job into one call of `generation.run_expansion` for the shard of this process
(`--split` of `--total_split` jobs, each divided among accelerate processes), then the run's report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from distdiff.cli import configure_threads
from distdiff.data.augment import eval_transform
from distdiff.data.datasets import DatasetError, LabeledImages, dataset_slug
from distdiff.data.registry import load_dataset
from distdiff.jobs.cost import CostReport, estimate
from distdiff.jobs.expand_config import ExpandConfig, ExpandJob, resolve
from distdiff.jobs.expand_flags import add_expand_arguments
from distdiff.method.dafusion import class_prompt
from distdiff.method.guidance import GuideEnergy
from distdiff.method.textual_inversion import (TextualInversionConfig, apply_embeddings, images_by_class,
                                               learn_embeddings, load_inversion_models)
from distdiff.method.prototypes import compute_prototypes
from distdiff.models.classifiers import ClassifierError, load_classifier
from distdiff.models.clip_zero_shot import ClipZeroShot, load_clip_zero_shot
from distdiff.pipelines.distdiff_img2img import DistDiffImg2ImgPipeline, load_stable_diffusion
from distdiff.pipelines.loading import MissingModelError
from distdiff.pipelines.sampling import encode_prompts
from distdiff.report.build import REPORT_JSON, build_report
from distdiff.report.metrics import ReportError
from distdiff.runs import expansion, generation
from distdiff.runs.latent_cache import LatentCache
from distdiff.runs.manifest import MANIFEST, summarize_manifest
from distdiff.runs.recipe import Recipe, recipe_defaults, recipe_params
from distdiff.utils.files import is_environment_error

# expand.py's entry points: the config and its flags are re-exported so the script imports one module.
__all__ = ["ExpandConfig", "add_expand_arguments", "run"]

logger = logging.getLogger(__name__)

FEATURE_BATCH_SIZE = 64  # images per guide forward when computing prototypes


def start_process(job: ExpandJob) -> PartialState:
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


def plan_work(job: ExpandJob, train: LabeledImages, state: PartialState) -> Work:
    """The work list of `job` over the train split `train`, and this process's shard."""
    selected = expansion.select_sources(train, job.max_source_images)
    work_list = expansion.work_items(train, selected, num_copies=job.num_images_per_prompt, seed=job.seed)
    shard, num_shards = expansion.global_shard(job.split, job.total_split, state.process_index, state.num_processes)
    ours = set(expansion.shard_sources(selected, shard=shard, num_shards=num_shards))
    return Work(work_list, [it for it in work_list if it.source_index in ours], shard, num_shards)


def load_model(job: ExpandJob, device) -> tuple[DistDiffImg2ImgPipeline, Recipe]:
    """The pipeline of --model on `device`, and the recipe of the images it makes (at --resolution or the model's)."""
    try:
        sd = load_stable_diffusion(job.model, device=device, precision=job.precision,
                                   gradient_checkpointing=job.gradient_checkpointing,
                                   local_files_only=job.local_files_only)
    except MissingModelError as err:
        if not job.model_is_default:
            raise expansion.ExpansionError(str(err)) from err
        from distdiff.tiny_sd.train import train_command  # the recipe writing this folder (shifted digits: digits')

        # The user named no model: the remedy is to make the registry's, which the loader cannot know.
        raise expansion.ExpansionError(f"the default model for {job.dataset}, {job.model}, does not exist; "
                                       f"train it with `{train_command(job.model)}` or pass --model.") from err
    except OSError as err:  # diffusers' "cannot find the model" is an OSError without errno
        if is_environment_error(err):
            raise
        raise expansion.ExpansionError(str(err)) from err
    resolution = job.resolution or sd.default_resolution
    if resolution % sd.vae_scale_factor:
        raise expansion.ExpansionError(f"--resolution {resolution} must be a multiple of the VAE's factor "
                                       f"{sd.vae_scale_factor}.")
    return sd, job.recipe(resolution=resolution, dtype=str(sd.dtype).removeprefix("torch."))


def open_output(job: ExpandJob, recipe: Recipe) -> dict:
    """The recipe's parameters, checked against OUT's before any work, so a mismatched resume fails fast."""
    params = recipe_params(recipe)
    expansion.ensure_run_config(job.output_dir, params, added_later=recipe_defaults(recipe))
    expansion.check_copies(job.output_dir, job.num_images_per_prompt)
    return params


def load_guide(job: ExpandJob, train: LabeledImages, state: PartialState) -> GuideEnergy | None:
    """The guide with its prototypes (computed once into OUT), or None for --guidance none without a guide."""
    if not Path(job.guide_checkpoint).is_file():
        logger.info("no guide checkpoint at %s: plain SD run, D_c/D_g not recorded", job.guide_checkpoint)
        return None
    model, info = load_classifier(job.guide_checkpoint, state.device,
                                  expected_arch=job.guide_arch if job.check_arch else None)
    if list(info["classes"]) != list(train.classes):
        raise expansion.ExpansionError(f"guide {job.guide_checkpoint} was trained on classes "
                                       f"{info['classes'][:5]}... of {info['dataset']}, not on {job.dataset}'s; "
                                       f"pass its own guide.")
    stat = Path(job.guide_checkpoint).stat()
    energy = job.energy
    metadata = {"dataset": job.dataset, "split": "train",
                "guide_checkpoint": str(Path(job.guide_checkpoint).resolve()),
                "guide_file": f"{stat.st_size}:{stat.st_mtime_ns}", "k": energy.K, "method": energy.cluster,
                "seed": job.seed, "image_size": info["image_size"], "mean": list(info["mean"]),
                "std": list(info["std"])}

    def compute(metadata):
        data = train.with_transform(eval_transform(info["image_size"], info["mean"], info["std"]))
        return compute_prototypes(model, data, k=energy.K, method=energy.cluster, seed=job.seed,
                                  batch_size=FEATURE_BATCH_SIZE, device=state.device, metadata=metadata)

    prototypes = expansion.shared_prototypes(state, job.output_dir, metadata, compute)
    gs, ls = job.guide_weights
    return GuideEnergy(model, prototypes.to(state.device), image_size=info["image_size"], mean=info["mean"],
                       std=info["std"], raw_input=energy.raw_guide_input, gs=gs, ls=ls)


def load_gif_clip(job: ExpandJob, train: LabeledImages, state: PartialState) -> ClipZeroShot | None:
    """GIF-SD's CLIP zero-shot classifier over the train classes (--gif_clip), or None to score with the guide."""
    clip = job.gif_clip
    if clip is None:
        return None
    try:
        return load_clip_zero_shot(clip, train.classes, device=state.device, local_files_only=job.local_files_only)
    except OSError as err:
        raise expansion.ExpansionError(f"--gif_clip {clip}: no CLIP model could be loaded from it ({err}). Pass a "
                                       f"folder holding a transformers CLIPModel and its tokenizer, or a hub id "
                                       f"such as openai/clip-vit-base-patch32 (downloaded unless "
                                       f"--local_files_only).") from err


def make_images(job: ExpandJob, sd: DistDiffImg2ImgPipeline, train: LabeledImages, work: Work, recipe: Recipe,
                params: dict, guide: GuideEnergy | None, state: PartialState) -> tuple[generation.Generated, float]:
    """Make this process's share of the images: (what was made, seconds taken)."""
    classifier = load_gif_clip(job, train, state)
    cache = LatentCache(job.cache_dir, sd, model=job.model, resolution=recipe.resolution, crop=job.crop,
                        precision=recipe.dtype)
    table, variants = generation.class_prompt_table(job.guidance, class_prompts(job, sd, train, recipe, state),
                                                    train.classes)
    prompts = encode_prompts(sd, table)
    begin = time.perf_counter()
    made = generation.run_expansion(
        sd, train, work.items, out_dir=job.output_dir, prompts=prompts, cache=cache, params=params,
        sampling=job.sampling, guidance=job.guidance, guide=guide, batch_size=job.batch_size,
        record_energy=job.record_energy, progress=state.is_local_main_process, shard=work.shard,
        num_shards=work.num_shards, candidates=job.selection.candidates, select=job.selection.select,
        prompt_variants=variants, strength_choices=job.strengths.choices, classifier=classifier)
    return made, time.perf_counter() - begin


def class_prompts(job: ExpandJob, sd: DistDiffImg2ImgPipeline, train: LabeledImages, recipe: Recipe,
                  state: PartialState) -> list[str]:
    """One prompt per class: the dataset's, or (--class_tokens learned) DA-Fusion's with the class's token, learned
    once per output folder on the train split and added to the pipeline's tokenizer and text encoder."""
    if not job.tokens.learned:
        return [train.prompt(c) for c in range(len(train.classes))]
    config = TextualInversionConfig(max_train_steps=job.tokens.inversion_steps, resolution=recipe.resolution,
                                    seed=job.seed)

    def learn() -> dict:
        logger.info("learning one token per class by textual inversion (%d steps each)", config.max_train_steps)
        return learn_embeddings(load_inversion_models(job.model, device=state.device), images_by_class(train),
                                config=config)

    # The same learning (model, train split, steps, size, seed) gives the same tokens: learnt once per cache, shared
    # by every folder that asks for it (DA-Fusion and DistDiff on its tokens, in a comparison).
    key = {"model": str(Path(job.model).resolve()) if Path(job.model).is_dir() else job.model, "dataset": job.dataset,
           "train": [[sample.label, sample.stem] for sample in train.samples], "steps": config.max_train_steps,
           "resolution": config.resolution, "seed": config.seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cached = job.cache_dir / "class_tokens" / f"{dataset_slug(job.dataset)}-{digest}.pt"
    apply_embeddings(sd.tokenizer, sd.text_encoder,
                     expansion.shared_class_tokens(state, job.output_dir, learn, cached=cached))
    return [class_prompt(name) for name in train.classes]


def finish(job: ExpandJob, state: PartialState, work: Work, recipe: Recipe, written: int) -> None:
    """Wait for every rank, leave the process group, and write the report if this launch's turn has come."""
    state.wait_for_everyone()
    # The ranks' shared work ends here. The report is one process's job, and torchmetrics' FID/KID would otherwise
    # try to sync their states with ranks that have left (a crash in gloo, a hang in NCCL).
    state.destroy_process_group()
    # One process per launch asks (after the barrier, so for all of its ranks); the turn marker picks among launches.
    out = job.output_dir
    if job.report and state.is_main_process and expansion.report_due(
            out, work.all_items, report=out / REPORT_JSON, made_images=written > 0):
        write_run_report(job, recipe.guide_checkpoint, state.device)


def write_run_report(job: ExpandJob, guide_checkpoint: str | None, device) -> None:
    """OUT/report.html + report.json; a report that cannot be made is a warning, the images stay valid."""
    out = job.output_dir
    logger.info("the work list is finished: writing its report in %s", out)
    try:
        build_report([out], data_root=job.data_root, dataset=job.dataset, guide_checkpoint=guide_checkpoint,
                     feature_spaces=job.report_spaces, inception_weights=job.inception_weights, device=device)
    except (ReportError, DatasetError, ClassifierError) as err:
        logger.warning("no report written for %s: %s. Fix that, then run `python scripts/report.py %s`.", out, err, out)


def run(config: ExpandConfig) -> dict | CostReport:
    """One expansion job (this process's shard); returns counts, timing and the manifest's means. With --dry_run,
    its cost instead, before any weight is read or any file written."""
    job = resolve(config)
    state = start_process(job)
    train = load_dataset(job.dataset, "train", root=job.data_root)
    work = plan_work(job, train, state)
    if config.dry_run:  # the whole work list's cost (every shard of every --split job), from the model's configs
        return estimate(job, train, work.all_items, work.num_shards)
    sd, recipe = load_model(job, state.device)
    params = open_output(job, recipe)
    guide = load_guide(job, train, state)
    made, seconds = make_images(job, sd, train, work, recipe, params, guide, state)
    finish(job, state, work, recipe, made.written)
    return {"output_dir": str(job.output_dir), "shard": f"{work.shard}/{work.num_shards}", "images": len(work.items),
            "written": made.written, "batch_size": made.batch_size, "seconds": seconds,
            "summary": summarize_manifest(job.output_dir / MANIFEST)}
