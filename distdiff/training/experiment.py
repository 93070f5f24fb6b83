"""One training run as train_original.py / train_expand.py run it: arguments, folders, data, results.

Run folder: `<output_root>/<dataset_slug>/[<EXP>/]<arch>_<pretrained|unpretrained>_lr<lr>[_<augment>]/seed<N>/`
holding model_best.pth.tar, last_state.pth.tar (resume), log.txt and results.yaml (written last:
its presence marks a finished run, which is skipped unless --overwrite).

Validation: a dataset with its own val split (digits, the shifted digits, Fashion-MNIST, Oxford
Flowers, an imagefolder with val/) is always validated on it, and model_best is its best-val epoch.
A dataset without one keeps the paper's train split whole and model_best is the final epoch, unless
--validation / --val_fraction hold out part of train (which changes the paper's setting).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from distdiff.data import datasets as data
from distdiff.data.real_or_synthetic import RealOrSynthetic
from distdiff.data.augment import AUGMENTS, eval_transform, train_transform
from distdiff.models.classifiers import ARCHS, CHECKPOINT_NAME, build_classifier
from distdiff.cli import add_threads_argument, configure_threads
from distdiff.utils.images import ImageError
from distdiff.data.registry import dataset_has_split, dataset_spec, load_dataset
from distdiff.training.results import RESULTS_NAME, write_results
from distdiff.utils.settings import check_settings
from distdiff.training.loop import (LAST_EPOCHS, LAST_STATE_NAME, LOG_NAME, TrainConfig, TrainingError,
                                    check_global_batch, fit, make_accelerator, seed_everything)

logger = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.1  # our choice: the paper has no validation split
EXPANDED_ROOT = "expanded"  # train_expand.py reads expanded/<dataset_slug>/<EXP>/ unless --expanded_dir
SEED_FIELD = "{seed}"  # in --expanded_dir: the run's --seed (one expansion per replicate)
MIXED_PRECISION = ("no", "fp16", "bf16")  # accelerate's choices
# The guide expand.py uses by default is the run `train_original.py DATASET ARCH 0.1 False 0` writes:
# the paper's guide is trained from scratch with lr 0.1 (docs/METHOD.md#defaults), seed 1 of 1 2 3.
GUIDE_LR = 0.1
GUIDE_SEED = 1


def parse_pretrained(text: str) -> bool:
    """PRETRAINED exactly as the paper's README writes it: True or False."""
    values = {"True": True, "False": False}
    if text not in values:
        raise argparse.ArgumentTypeError(f"PRETRAINED must be True or False (as in `python train_original.py "
                                         f"caltech-101 resnet50 0.1 False 0`), got '{text}'.")
    return values[text]


def parse_lr(text: str) -> float:
    """LR: a positive number."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"LR must be a positive number such as 0.1, got '{text}'.")
    return value


def parse_gpu(text: str) -> str:
    """GPU: a CUDA device index or a comma list of them (e.g. 0 or 0,1)."""
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise argparse.ArgumentTypeError(f"GPU must be a device index such as 0 (or a list such as 0,1), got '{text}'.")
    return text


def parse_exp(text: str) -> str:
    """EXP: an experiment name usable as one folder name."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"EXP names a folder: use letters, digits and _ . + - only, got '{text}'.")
    return text


@dataclass(frozen=True)
class RunConfig:
    """One training run: the arguments of train_original.py / train_expand.py, with the paper's defaults.

    The optimisation defaults are TrainConfig's (distdiff/training/loop.py, with their sources); None
    means "the dataset's registry entry decides" (image size, flips).
    """

    dataset: str
    arch: str
    lr: float  # the paper: 0.1 from scratch
    pretrained: bool
    gpu: str = "0"
    exp: str | None = None  # train_expand.py's EXP: original + synthetic of expanded/<dataset>/<EXP>
    expanded_dir: str | None = None
    # DA-Fusion's sampling (distdiff/data/real_or_synthetic.py): each real image, replaced with this probability by
    # one of its own synthetic copies; None: original + synthetic concatenated (the paper's).
    synthetic_probability: float | None = None
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    seed: int = TrainConfig.seed
    image_size: int | None = None  # the registry's (the paper's 224; 32 for the small datasets)
    augment: str = TrainConfig.augment
    flip: bool | None = None  # the registry's (no flips for digits)
    validation: bool = False  # hold out DEFAULT_VAL_FRACTION of train where the dataset has no val split
    val_fraction: float | None = None  # hold out this fraction of train (even where a val split exists)
    model_best_on_test: bool = TrainConfig.model_best_on_test
    data_root: str = "data"
    output_root: str = "checkpoint"
    mixed_precision: str = "no"
    num_workers: int = TrainConfig.num_workers
    pretrained_path: str | None = None
    overwrite: bool = False
    skip_unreadable: bool = False
    num_threads: int | None = None


def add_train_arguments(parser: argparse.ArgumentParser, *, expand: bool) -> None:
    """The positional arguments of the paper's scripts and the optional flags both scripts share (RunConfig's)."""
    defaults = RunConfig
    parser.add_argument("dataset", metavar="DATASET", help="digits, imagefolder:PATH or a registered dataset")
    parser.add_argument("arch", metavar="ARCH", choices=sorted(ARCHS), help=f"one of {sorted(ARCHS)}")
    parser.add_argument("lr", metavar="LR", type=parse_lr, help="learning rate (paper: 0.1)")
    if expand:
        parser.add_argument("exp", metavar="EXP", type=parse_exp, help="experiment name (names the output folder)")
    parser.add_argument("pretrained", metavar="PRETRAINED", type=parse_pretrained, help="True or False")
    parser.add_argument("gpu", metavar="GPU", type=parse_gpu, help="CUDA device index; ignored on CPU")
    if expand:
        parser.add_argument("--expanded_dir", default=None,
                            help=f"synthetic images <dir>/<class>/*.png (default {EXPANDED_ROOT}/<dataset_slug>/<EXP>); "
                                 f"{SEED_FIELD} in it is replaced by --seed, so replicate N trains on its own "
                                 f"expansion, e.g. expanded/digits/distdiff_5x/seed{SEED_FIELD}")
        parser.add_argument("--synthetic_probability", type=float, default=None, metavar="P",
                            help="DA-Fusion's sampling: an epoch is the original images, each replaced with "
                                 "probability P by a random synthetic copy of its own (DA-Fusion: 0.5); default: "
                                 "train on original + synthetic images together, as the paper")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="paper: 100 (docs/METHOD.md#defaults)")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="paper: 64")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the paper averages seeds 1 2 3")
    parser.add_argument("--image_size", type=int, default=None,
                        help="default: the dataset's registry entry (the paper's 224, 32 for digits); with PRETRAINED "
                             "True the resolution the ImageNet weights were trained at (224)")
    parser.add_argument("--augment", choices=sorted(AUGMENTS), default=defaults.augment, help="extra augmentation")
    flip = parser.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_true", default=None, help="force horizontal flips")
    flip.add_argument("--no_flip", dest="flip", action="store_false",
                      help="no flips (the default where the dataset's registry entry says so: digits)")
    parser.add_argument("--validation", action="store_true",
                        help=f"where the dataset has no val split, hold out {DEFAULT_VAL_FRACTION} of each class's "
                             f"train images to validate on (a dataset's own val split is always used)")
    parser.add_argument("--val_fraction", type=float, default=None,
                        help="hold out this fraction of each class's train images to validate on, instead of the "
                             "dataset's val split")
    parser.add_argument("--model_best_on_test", action="store_true",
                        help="save model_best at the best *test* epoch, as the authors' train.py does (this chooses "
                             "on test; by default model_best is the best-validation epoch, else the final epoch)")
    parser.add_argument("--data_root", default=defaults.data_root, help="folder holding the datasets")
    parser.add_argument("--output_root", default=defaults.output_root, help="folder for run outputs")
    parser.add_argument("--mixed_precision", choices=MIXED_PRECISION, default=defaults.mixed_precision,
                        help="accelerate's flag")
    parser.add_argument("--num_workers", type=int, default=defaults.num_workers, help="DataLoader workers")
    parser.add_argument("--pretrained_path", default=None, help="local ImageNet weight file for PRETRAINED True")
    parser.add_argument("--overwrite", action="store_true", help="rerun a finished run from scratch")
    parser.add_argument("--print_checkpoint", action="store_true",
                        help="print the path of this run's model_best.pth.tar and exit (shell scripts use it to "
                             "find the guide)")
    parser.add_argument("--skip_unreadable", action="store_true",
                        help="skip image files that cannot be read (listed in the log, counted in results.yaml) "
                             "instead of stopping at the first one")
    add_threads_argument(parser)


def expansion_for_seed(expanded_dir: str, seed: int) -> str:
    """`expanded_dir` with SEED_FIELD replaced by `seed`: replicate N of the whole pipeline (guide, expansion and
    classifier all seeded N) trains on the expansion replicate N made."""
    return expanded_dir.replace(SEED_FIELD, str(seed))


def run_name(arch: str, pretrained: bool, lr: float, augment: str) -> str:
    """`<arch>_<pretrained|unpretrained>_lr<lr>[_<augment>]`, e.g. resnet50_unpretrained_lr0.1."""
    name = f"{arch}_{'pretrained' if pretrained else 'unpretrained'}_lr{lr:g}"
    return name if augment == "default" else f"{name}_{augment}"


def run_path(*, output_root: str | Path, dataset: str, arch: str, pretrained: bool, lr: float, seed: int,
             augment: str = "default", exp: str | None = None) -> Path:
    """The seed folder of a run (see the module docstring); the one place that spells the layout."""
    root = Path(output_root) / data.dataset_slug(dataset)
    if exp:
        root = root / exp
    return root / run_name(arch, pretrained, lr, augment) / f"seed{seed}"


def run_dir(config: RunConfig) -> Path:
    """The seed folder of the run `config` describes."""
    return run_path(output_root=config.output_root, dataset=config.dataset, arch=config.arch,
                    pretrained=config.pretrained, lr=config.lr, seed=config.seed, augment=config.augment,
                    exp=config.exp)


def checkpoint_path(config: RunConfig) -> Path:
    """The model_best.pth.tar the run writes (what --print_checkpoint prints)."""
    return run_dir(config) / CHECKPOINT_NAME


def guide_checkpoint(dataset: str, arch: str, *, output_root: str | Path = "checkpoint") -> Path:
    """expand.py's default guide: what `train_original.py DATASET ARCH 0.1 False 0` writes."""
    return run_path(output_root=output_root, dataset=dataset, arch=arch, pretrained=False, lr=GUIDE_LR,
                    seed=GUIDE_SEED) / CHECKPOINT_NAME


def image_settings(config: RunConfig) -> tuple[int, bool]:
    """(image size, flip) of a run: the flags where given, else the dataset's registry entry.

    A pretrained model defaults to the resolution its ImageNet weights were trained at: at the
    digits' 32 px its 32x-downsampling backbones would see a 1x1 map, unlike anything it learned.
    """
    spec = dataset_spec(config.dataset)
    default_size = ARCHS[config.arch].input_size if config.pretrained else spec.image_size
    return config.image_size or default_size, spec.flip if config.flip is None else config.flip


def configure_gpu(gpu: str) -> str:
    """Expose only CUDA device(s) `gpu` (before accelerate starts); returns a note for the log."""
    if "LOCAL_RANK" in os.environ:
        return f"GPU {gpu} ignored: accelerate launch assigns the devices"
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if not torch.cuda.is_available():
        return f"GPU {gpu} ignored: no CUDA device, training on CPU"
    return f"using CUDA device(s) {gpu}"


def _validate(config: RunConfig) -> None:
    for flag in ("epochs", "batch_size"):
        if getattr(config, flag) < 1:
            raise TrainingError(f"--{flag} must be at least 1, got {getattr(config, flag)}.")
    if config.num_threads is not None and config.num_threads < 1:
        raise TrainingError(f"--num_threads must be at least 1, got {config.num_threads}.")
    if config.num_workers < 0:
        raise TrainingError(f"--num_workers must be 0 or more, got {config.num_workers}.")
    if config.image_size is not None and config.image_size < 8:
        raise TrainingError(f"--image_size must be at least 8 pixels, got {config.image_size}.")
    check_settings(synthetic_probability=config.synthetic_probability)
    if config.synthetic_probability is not None and not config.exp:
        raise TrainingError("--synthetic_probability chooses between original images and their synthetic copies: "
                            "it needs an expansion (train_expand.py's EXP).")


def _drop_synthetic_of(synthetic: data.LabeledImages, held_out: data.LabeledImages) -> data.LabeledImages:
    """Synthetic images whose source image is not in `held_out` (expand.py names them <stem>_expand_<i>)."""
    held = {(s.label, s.stem) for s in held_out.samples}
    made_from = [data.source_of_synthetic(s.stem) for s in synthetic.samples]
    keep = [i for i, (s, source) in enumerate(zip(synthetic.samples, made_from))
            if source is None or (s.label, source[0]) not in held]
    return synthetic.subset(keep)


def _without_unreadable(dataset: data.LabeledImages | None) -> tuple[data.LabeledImages | None, int]:
    """`dataset` less the image files open_image cannot read (each logged), and how many were dropped."""
    if dataset is None:
        return None, 0
    kept = []
    for index in range(len(dataset)):
        try:
            dataset.load_image(index)
            kept.append(index)
        except ImageError as err:
            logger.warning("skipping unreadable image (--skip_unreadable): %s", err)
    return dataset.subset(kept), len(dataset) - len(kept)


def load_run_data(config: RunConfig, image_size: int, flip: bool, expanded_dir: str | Path | None
                  ) -> dict[str, Any]:
    """Transformed train (original [+ synthetic], or each original or one of its copies with probability
    config.synthetic_probability), val (or None) and test sets, and their sizes."""
    name, root = config.dataset, config.data_root
    if config.synthetic_probability is not None and expanded_dir is None:
        raise TrainingError("--synthetic_probability needs synthetic images: give an expansion (EXP, --expanded_dir).")
    train = load_dataset(name, "train", root=root)
    test = load_dataset(name, "test", root=root)
    val, val_source = None, None
    if config.val_fraction is None and dataset_has_split(name, "val", root):
        val, val_source = load_dataset(name, "val", root=root), "val split"
    elif config.validation or config.val_fraction is not None:
        fraction = config.val_fraction if config.val_fraction is not None else DEFAULT_VAL_FRACTION
        train, val = data.holdout(train, fraction, seed=0)
        val_source = f"{fraction:g} of train"
    synthetic, dropped = None, 0
    if expanded_dir is not None:
        synthetic = data.load_expanded(expanded_dir, train.classes, prompt_template=train.prompt_template)
        if val is not None and val_source != "val split":
            kept = _drop_synthetic_of(synthetic, val)
            dropped = len(synthetic) - len(kept)
            if dropped:
                logger.warning("dropped %d synthetic images made from held-out validation images", dropped)
            synthetic = kept
    skipped = 0
    if config.skip_unreadable:
        (train, n_train), (test, n_test), (val, n_val), (synthetic, n_synthetic) = [
            _without_unreadable(d) for d in (train, test, val, synthetic)]
        skipped = n_train + n_test + n_val + n_synthetic
        if skipped:
            logger.warning("--skip_unreadable: skipped %d unreadable images (train %d, val %d, test %d, synthetic %d)",
                           skipped, n_train, n_val, n_test, n_synthetic)
    mean, std = ARCHS[config.arch].mean, ARCHS[config.arch].std
    train_tf = train_transform(image_size, mean, std, flip=flip, augment=config.augment)
    eval_tf = eval_transform(image_size, mean, std)
    if config.synthetic_probability is not None:
        train_set = RealOrSynthetic(train, synthetic, probability=config.synthetic_probability, seed=config.seed,
                                    transform=train_tf)
    else:
        parts = [train.with_transform(train_tf)] + ([synthetic.with_transform(train_tf)] if synthetic else [])
        train_set = ConcatDataset(parts) if len(parts) > 1 else parts[0]
    return {"train": train_set, "classes": train.classes,
            "val": val.with_transform(eval_tf) if val is not None else None, "test": test.with_transform(eval_tf),
            "counts": {"num_train": len(train), "num_synthetic": len(synthetic) if synthetic else 0,
                       "num_synthetic_dropped": dropped, "num_val": len(val) if val is not None else 0,
                       "num_test": len(test), "num_unreadable_skipped": skipped},
            "val_source": val_source}


def _plain(value: Any) -> Any:
    # Checkpoints are read with weights_only=True, which accepts only plain python values.
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def run_training(config: RunConfig) -> dict[str, Any] | None:
    """Train one seed; returns results.yaml's content, or None for a skipped finished run."""
    _validate(config)
    out = run_dir(config)
    if (out / RESULTS_NAME).is_file() and not config.overwrite:
        logger.warning("skipping %s: finished (results.yaml exists); pass --overwrite to run it again", out)
        return None
    logger.info(configure_gpu(config.gpu))
    if not torch.cuda.is_available():
        logger.info("using %d CPU threads", configure_threads(config.num_threads))
    accelerator = make_accelerator(config.mixed_precision)
    check_global_batch(config.batch_size, accelerator)  # before --overwrite deletes anything
    if config.overwrite:
        if accelerator.is_main_process:  # once, and before any process writes the new run's files
            for name in (RESULTS_NAME, CHECKPOINT_NAME, LAST_STATE_NAME, LOG_NAME):
                (out / name).unlink(missing_ok=True)
        accelerator.wait_for_everyone()
    expanded_dir = None
    if config.exp:
        expanded_dir = expansion_for_seed(config.expanded_dir, config.seed) if config.expanded_dir else (
            Path(EXPANDED_ROOT) / data.dataset_slug(config.dataset) / config.exp)
    image_size, flip = image_settings(config)
    run_data = load_run_data(config, image_size, flip, expanded_dir)

    seed_everything(config.seed)
    model = build_classifier(config.arch, len(run_data["classes"]), pretrained=config.pretrained,
                             pretrained_path=config.pretrained_path)
    info = {"arch": config.arch, "num_classes": len(run_data["classes"]), "classes": list(run_data["classes"]),
            "image_size": image_size, "mean": list(ARCHS[config.arch].mean), "std": list(ARCHS[config.arch].std),
            "dataset": config.dataset, "pretrained": config.pretrained,
            "args": {k: _plain(v) for k, v in asdict(config).items()}}
    train_config = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                               augment=config.augment, num_workers=config.num_workers,
                               model_best_on_test=config.model_best_on_test,
                               synthetic_probability=config.synthetic_probability)
    summary = fit(model, train_set=run_data["train"], test_set=run_data["test"], val_set=run_data["val"],
                  config=train_config, output_dir=out, info=info, accelerator=accelerator)
    results = {"dataset": config.dataset, "exp": config.exp, "arch": config.arch, "lr": config.lr,
               "pretrained": config.pretrained, "augment": config.augment, "seed": config.seed, "epochs": config.epochs,
               "batch_size": config.batch_size, "image_size": image_size, "flip": flip,
               "expanded_dir": str(expanded_dir) if expanded_dir else None,
               "synthetic_probability": config.synthetic_probability,
               "val_source": run_data["val_source"], **summary, **run_data["counts"]}
    if accelerator.is_main_process:
        write_results(out / RESULTS_NAME, results)
        at_val = results.get("val_selected_accuracy")
        logger.info("%s: test accuracy %s at the best-val epoch, %.2f mean of the last %d epochs; best test %.2f "
                    "(epoch %d); model_best: %s (epoch %d)", out, "-" if at_val is None else f"{at_val:.2f}",
                    results["last10_accuracy"], LAST_EPOCHS, results["best_accuracy"], results["best_epoch"],
                    results["model_best"], results["model_best_epoch"])
    return results
