"""The classifier training loop: SGD + cosine schedule, evaluation every epoch, resumable.

Accelerate places the model and batches on the device, runs mixed precision and shards batches
over several processes (`accelerate launch`); nothing here names a device.

model_best.pth.tar (the checkpoint expand.py loads as its guide) is never chosen on test by default:
it is the epoch of best validation accuracy where a validation set exists, else the final epoch.
`model_best_on_test` restores the authors' train.py, which keeps the best *test* epoch. The summary
reports the test accuracy at the best-validation epoch, the mean test accuracy over the last 10
epochs (no selection at all) and, beside them, the paper's metric: the best test accuracy over epochs.

Under N processes (docs/SCALING.md#training): `batch_size` stays the global batch, split N ways
(so the steps per epoch and the schedule are a one-process run's); evaluation gathers each image's
prediction once (gather_for_metrics drops the padding of an uneven last batch); only the main
process writes checkpoints, the log and results. BatchNorm normalises each process's share of the
batch, so training is not bit-equal to one process.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from distdiff.data.augment import batch_transform
from distdiff.models.classifiers import CHECKPOINT_NAME, save_checkpoint
from distdiff.errors import UserError
from distdiff.utils.files import UnreadableFileError, atomic_torch_save, load_torch_file
from distdiff.utils.settings import changed_settings

logger = logging.getLogger(__name__)

LAST_STATE_NAME = "last_state.pth.tar"
LOG_NAME = "log.txt"
# The selection-free summary: the mean test accuracy of the last LAST_EPOCHS epochs (the cosine schedule's tail).
LAST_EPOCHS = 10
# Evaluation sets whose transformed tensors fit in this many bytes are transformed once, not every epoch
# (Fashion-MNIST's 10,000 test images at 32 px: 123 MB, about 1.2 s of PIL work per epoch on one thread).
EVAL_CACHE_BYTES = 1 << 30


class TrainingError(UserError):
    """Training cannot start or resume as asked (e.g. a saved state from different settings)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one run."""

    epochs: int = 100  # the paper's recipe; the authors' train_original.sh (--epochs 100)
    batch_size: int = 64  # the authors' train_original.sh (--train-batch-size 64)
    lr: float = 0.1  # the authors' README call (LR 0.1 from scratch), cosine schedule as their train.py
    momentum: float = 0.9  # the authors' train.py: SGD momentum 0.9, Nesterov
    nesterov: bool = True
    weight_decay: float = 1e-4  # the authors' train.py default
    seed: int = 1  # the paper averages seeds 1, 2, 3
    augment: str = "default"
    num_workers: int = 4  # PyTorch ImageNet example default
    # The authors' train.py saves the best test epoch; ours never chooses on test unless asked (ModelBest).
    model_best_on_test: bool = False
    # Not used by fit: the train set's sampling (distdiff/data/real_or_synthetic.py), kept so that a run resumes
    # only with the sampling it started with. None: the train set as given.
    synthetic_probability: float | None = None


# A saved state is only resumed when these settings match (num_workers may change freely).
RESUME_KEYS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "seed", "augment",
               "model_best_on_test", "synthetic_probability")
# Settings added after states were first saved: an older state holds these values implicitly.
RESUME_DEFAULTS = {"model_best_on_test": False, "synthetic_probability": None}


class ModelBest(str, Enum):
    """Which epoch model_best.pth.tar holds (recorded in results.yaml as `model_best`)."""

    BEST_VAL = "best_val_epoch"  # the first epoch reaching the highest validation accuracy
    FINAL = "final_epoch"  # no validation set: the last epoch, no selection at all
    BEST_TEST = "best_test_epoch"  # the authors' train.py: chosen on test (--model_best_on_test)


def model_best_rule(*, has_val: bool, on_test: bool) -> ModelBest:
    """The epoch model_best keeps: best test only when asked, else best validation, else final."""
    if on_test:
        return ModelBest.BEST_TEST
    return ModelBest.BEST_VAL if has_val else ModelBest.FINAL


def selection_score(row: dict[str, Any], rule: ModelBest) -> float:
    """The number model_best maximises over epochs (a strictly higher score replaces the saved epoch)."""
    if rule is ModelBest.BEST_VAL:
        return row["val_accuracy"]
    if rule is ModelBest.BEST_TEST:
        return row["test_accuracy"]
    return float(row["epoch"])


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """The Accelerator of a training run: each global batch of `batch_size` is split over the processes.

    Without CUDA, accelerate forms a (gloo) process group only when told it runs on the CPU; else
    each launched process would train alone and write the same files.
    """
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def check_global_batch(batch_size: int, accelerator: Accelerator) -> None:
    """Refuse a global batch that the processes cannot split evenly."""
    if batch_size % accelerator.num_processes:
        raise TrainingError(f"--batch_size {batch_size} is the global batch, split over {accelerator.num_processes} "
                            f"processes: pass a multiple of {accelerator.num_processes}.")


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy and torch (all devices)."""
    set_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # Each DataLoader worker derives its numpy/random seed from torch's per-worker seed.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int,
                generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader; when shuffling, a lone last sample is dropped (BatchNorm needs 2 per batch)."""
    drop_last = shuffle and len(dataset) % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, worker_init_fn=_seed_worker, drop_last=drop_last)


def cached_eval_set(dataset: Dataset, *, max_bytes: int = EVAL_CACHE_BYTES) -> Dataset:
    """`dataset` as in-memory (images [N, C, H, W], labels [N]) when they fit in `max_bytes`, else unchanged.

    Only for evaluation sets: their transform is deterministic, so every epoch sees the same tensors.
    """
    if len(dataset) == 0:
        return dataset
    first, _ = dataset[0]
    if not torch.is_tensor(first) or first.numel() * first.element_size() * len(dataset) > max_bytes:
        return dataset
    images = torch.empty((len(dataset), *first.shape), dtype=first.dtype)
    labels = torch.empty(len(dataset), dtype=torch.long)
    for i in tqdm(range(len(dataset)), desc="caching eval set", leave=False, mininterval=2):
        images[i], labels[i] = dataset[i]
    return TensorDataset(images, labels)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accelerator: Accelerator) -> tuple[float, int]:
    """(top-1 accuracy in percent, images counted) of `model` over `loader`, each image once across processes."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        preds = model(images).argmax(dim=1)
        preds, labels = accelerator.gather_for_metrics((preds, labels))
        correct += (preds == labels).sum().item()
        total += labels.numel()
    return 100.0 * correct / max(total, 1), total


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    accelerator: Accelerator, mix) -> tuple[float, float]:
    """One pass over `loader` with soft-target cross entropy -> (mean loss, train accuracy %)."""
    model.train()
    loss_sum = correct = total = 0.0
    for images, labels in tqdm(loader, desc="batches", leave=False, disable=not accelerator.is_local_main_process):
        images, targets = mix(images, labels)
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        loss_sum += loss.item() * labels.numel()
        correct += (logits.argmax(dim=1) == targets.argmax(dim=1)).sum().item()
        total += labels.numel()
    return loss_sum / max(total, 1), 100.0 * correct / max(total, 1)


def summarize_history(history: list[dict[str, Any]], rule: ModelBest) -> dict[str, Any]:
    """Accuracies of per-epoch rows (epochs 1-based): at the best-val epoch, over the last LAST_EPOCHS epochs,
    the paper's best test, and which epoch model_best holds under `rule`."""
    test = [row["test_accuracy"] for row in history]
    best = int(np.argmax(test))  # first epoch reaching the maximum
    summary = {"last10_accuracy": float(np.mean(test[-LAST_EPOCHS:])), "best_accuracy": test[best],
               "best_epoch": history[best]["epoch"], "final_accuracy": test[-1], "epochs_done": history[-1]["epoch"],
               "train_time_s": round(sum(row["time_s"] for row in history), 1)}
    if history[0].get("val_accuracy") is not None:
        val = [row["val_accuracy"] for row in history]
        chosen = int(np.argmax(val))  # first epoch reaching the maximum
        summary.update(val_selected_accuracy=test[chosen], val_best_accuracy=val[chosen],
                       val_selected_epoch=history[chosen]["epoch"])
    kept = int(np.argmax([selection_score(row, rule) for row in history]))
    summary.update(model_best=rule.value, model_best_epoch=history[kept]["epoch"])
    return summary


def _load_last_state(path: Path, config: TrainConfig) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = load_torch_file(path)
        saved = state["config"]
    except (UnreadableFileError, KeyError, TypeError) as err:
        raise TrainingError(f"cannot resume from {path} ({err}); pass --overwrite to start this run again.") from err
    changed = changed_settings(saved, {k: getattr(config, k) for k in RESUME_KEYS}, defaults=RESUME_DEFAULTS)
    if changed:
        raise TrainingError(f"{path} was saved with other settings {changed} (saved, asked); pass --overwrite "
                            f"to start this run again, or use the saved settings to resume it.")
    return state


def _append_log(path: Path, line: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError as err:  # a failed write names no file; the user needs to know which
        raise OSError(err.errno, err.strerror, str(path)) from err


def fit(model: nn.Module, *, train_set: Dataset, test_set: Dataset, val_set: Dataset | None,
        config: TrainConfig, output_dir: str | Path, info: dict[str, Any],
        accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Train `model`, evaluate every epoch, keep model_best.pth.tar (see ModelBest) and a resumable last state.

    Rerunning with the same output_dir continues after the last finished epoch. Returns
    summarize_history(...) of all epochs. `info` goes into the checkpoint (see load_classifier).
    """
    accelerator = accelerator or make_accelerator()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    last_path, log_path = output_dir / LAST_STATE_NAME, output_dir / LOG_NAME
    if config.epochs < 1 or config.batch_size < 1:
        raise TrainingError(f"--epochs and --batch_size must be at least 1, got {config.epochs} and "
                            f"{config.batch_size}.")
    check_global_batch(config.batch_size, accelerator)
    if len(train_set) < 2:
        raise TrainingError(f"the training set has {len(train_set)} images; at least 2 are needed.")

    seed_everything(config.seed)
    generator = torch.Generator()
    train_loader = make_loader(train_set, batch_size=config.batch_size, shuffle=True,
                               num_workers=config.num_workers, generator=generator)

    def eval_loader(dataset: Dataset) -> DataLoader:
        dataset = cached_eval_set(dataset)  # in memory: no workers to start every epoch
        return make_loader(dataset, batch_size=config.batch_size, shuffle=False,
                           num_workers=0 if isinstance(dataset, TensorDataset) else config.num_workers)

    test_loader = eval_loader(test_set)
    val_loader = eval_loader(val_set) if val_set is not None else None
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)

    state = _load_last_state(last_path, config)
    history: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        logger.info("resuming %s after epoch %d", output_dir, len(history))
    if accelerator.is_main_process:
        _append_log(log_path, f"{'resume after epoch ' + str(len(history)) if history else 'start'}: "
                              f"{asdict(config)} train {len(train_set)} val {len(val_set) if val_set else 0} "
                              f"test {len(test_set)} device {accelerator.device}")
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    mix = batch_transform(config.augment, info["num_classes"])
    rule = model_best_rule(has_val=val_loader is not None, on_test=config.model_best_on_test)
    best_score = max((selection_score(row, rule) for row in history), default=-1.0)

    epochs = tqdm(range(len(history), config.epochs), desc=f"train {output_dir.name}", initial=len(history),
                  total=config.epochs, disable=not accelerator.is_local_main_process)
    for epoch in epochs:
        # Reseed per epoch so a resumed run draws the same batches and augmentations as an unbroken one.
        seed_everything(config.seed * 1000 + epoch)
        generator.manual_seed(config.seed * 1000 + epoch)
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loss, train_acc = train_one_epoch(model, train_loader, optimizer, accelerator, mix)
        scheduler.step()
        val_accuracy, val_images = evaluate(model, val_loader, accelerator) if val_loader is not None else (None, 0)
        test_accuracy, test_images = evaluate(model, test_loader, accelerator)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss, "train_accuracy": train_acc,
               "val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
               "val_images": val_images, "test_images": test_images}
        row["time_s"] = time.perf_counter() - start
        history.append(row)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            if selection_score(row, rule) > best_score:
                save_checkpoint(output_dir / CHECKPOINT_NAME, unwrapped, info, epoch=row["epoch"],
                                test_accuracy=row["test_accuracy"], val_accuracy=row["val_accuracy"])
            atomic_torch_save({"model": unwrapped.state_dict(), "optimizer": optimizer.optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "history": history, "config": asdict(config)},
                        last_path)
            val_text = f" val_acc {row['val_accuracy']:.2f}" if row["val_accuracy"] is not None else ""
            _append_log(log_path, f"epoch {row['epoch']}/{config.epochs} lr {lr:.6f} loss {loss:.4f} "
                                  f"train_acc {train_acc:.2f}{val_text} test_acc {row['test_accuracy']:.2f} "
                                  f"time {row['time_s']:.1f}s")
        best_score = max(best_score, selection_score(row, rule))
        epochs.set_postfix(loss=f"{loss:.3f}", test=f"{row['test_accuracy']:.1f}")
        accelerator.wait_for_everyone()
    return summarize_history(history, rule)
