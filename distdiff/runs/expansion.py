"""Expansion runs: the work list, sharding, claims, resume and atomic outputs (docs/METHOD.md#pipeline, step 3).

Layout of an output folder OUT:
- OUT/<class>/<source stem>_expand_<i>.png   synthetic images, each written atomically; a work list
                                              with a name over the file system's limit is refused
                                              before any image is made (train_expand.py matches
                                              copies to sources by this name, so it is never hashed)
- OUT/manifest.jsonl, OUT/manifest.<s>-of-<n>.jsonl
                                              one JSON line per finished image, one file per shard,
                                              read as one manifest (distdiff/runs/manifest.py)
- OUT/prototypes.pt                           the guide's prototypes and what they came from
- OUT/expand_config.json                      the parameters every image in OUT was made with

An image is finished when its PNG exists and the manifest has its line; the PNG is written
first, so a crash between the two leaves an image that the next run regenerates identically
(its seed does not depend on the run). Shards split the *source images* of a deterministic work
list, so all copies of a source stay in one shard, and shards never write the same file: not the
same image, not the same manifest file. That, and nothing else, is what keeps the ranks of a
multi-node run apart; no correctness depends on a lock a shared filesystem may not honour.

Claims are an optimisation for *several runs on one folder* (two runs of one command, or
overlapping shard layouts): a run claims a source image (an OS lock on
OUT/.claims/<class>/<stem>.lock, the stem hashed where that name is too long, which the kernel
releases when the process dies, even by kill -9) before making its copies, and skips sources
another run holds. Where a filesystem drops the lock, both runs make the image, to the same bytes
(atomic renames), and the manifest reads it as one record: work is repeated, nothing is wrong.

The images themselves are made batch by batch in distdiff/runs/generation.py.

The report is written once per work list, by the first process that finds the whole list finished
(`report_due`), so --split jobs and accelerate ranks write no partial reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout
from PIL import Image

from distdiff.data.datasets import LabeledImages, synthetic_stem
from distdiff.errors import UserError
from distdiff.method.prototypes import PrototypeFileError, Prototypes
from distdiff.method.textual_inversion import load_embeddings, save_embeddings
from distdiff.pipelines.sampling import image_seed
from distdiff.runs.manifest import MANIFEST, ManifestReader, read_manifest
from distdiff.utils.files import NAME_MAX, atomic_open, atomic_write_text, fitting_name, name_fits, temp_pattern
from distdiff.utils.settings import changed_settings

logger = logging.getLogger(__name__)

PROTOTYPES = "prototypes.pt"
CLASS_TOKENS = "class_tokens.pt"  # DA-Fusion's learned tokens of this folder ({token: [D] tensor})
RUN_CONFIG = "expand_config.json"
LOCK = ".expand.lock"
CLAIMS = ".claims"  # per-source claim locks of the runs working in OUT
REPORT_TURN = ".report-{digest}.taken"  # created (O_EXCL) by the one process that writes a finished work list's report


class ExpansionError(UserError):
    """An output folder or request that an expansion run cannot honour."""


@dataclass(frozen=True)
class WorkItem:
    """One synthetic image to make: copy `copy` of dataset sample `source_index`."""

    source_index: int
    label: int
    class_name: str
    stem: str
    copy: int
    seed: int

    @property
    def file_name(self) -> str:
        """The synthetic image's file name, `<stem>_expand_<copy>.png`."""
        return synthetic_stem(self.stem, self.copy) + ".png"

    @property
    def image(self) -> str:
        """Path relative to the output folder."""
        return f"{self.class_name}/{self.file_name}"


def select_sources(dataset: LabeledImages, max_source_images: int | None = None) -> list[int]:
    """All sample indices, or the first N taken round-robin over classes so a small run covers every class."""
    if max_source_images is None:
        return list(range(len(dataset)))
    rank, seen = [], {}
    for i, label in enumerate(dataset.labels):
        rank.append((seen.get(label, 0), label, i))
        seen[label] = seen.get(label, 0) + 1
    return sorted(i for _, _, i in sorted(rank)[:max_source_images])


def global_shard(split: int, total_split: int, process_index: int = 0, num_processes: int = 1) -> tuple[int, int]:
    """(shard, number of shards): each --split job is divided again among its accelerate processes."""
    if not 0 <= split < total_split:
        raise ExpansionError(f"--split must be in [0, --total_split={total_split}), got {split}.")
    return split * num_processes + process_index, total_split * num_processes


def shard_sources(sources: Sequence[int], *, shard: int, num_shards: int) -> list[int]:
    """Every num_shards-th source starting at `shard`: shards are disjoint and cover all sources."""
    return list(sources[shard::num_shards])


def work_items(dataset: LabeledImages, sources: Sequence[int], *, num_copies: int, seed: int) -> list[WorkItem]:
    """The images to make for `sources`, source-major; each seed hashes (seed, class, stem, copy)."""
    items = []
    for index in sources:
        sample = dataset.samples[index]
        name = dataset.classes[sample.label]
        for copy in range(num_copies):
            items.append(WorkItem(index, sample.label, name, sample.stem, copy,
                                  image_seed(seed, name, sample.stem, copy)))
    check_image_names(dataset, items)
    return items


def check_image_names(dataset: LabeledImages, items: Sequence[WorkItem]) -> None:
    """Refuse, before any image is made, a work list with a synthetic image name over the file system's limit."""
    too_long = [it for it in items if not name_fits(it.file_name)]
    if not too_long:
        return
    first = too_long[0]
    longest = max(too_long, key=lambda it: it.copy)  # the longest suffix sets the room left for the stem
    room = NAME_MAX - len(os.fsencode(longest.file_name.removeprefix(longest.stem)))
    others = len({it.source_index for it in too_long}) - 1
    more = f" (and {others} more source image{'s' if others > 1 else ''})" if others else ""
    raise ExpansionError(f"{source_name(dataset, first.source_index)}: its synthetic images would be named "
                         f"<stem>_expand_<i>.png, {len(os.fsencode(first.file_name))} bytes, over the file "
                         f"system's limit of {NAME_MAX} bytes per name; rename it to a stem of at most {room} "
                         f"bytes{more}.")


def source_name(dataset: LabeledImages, index: int) -> str:
    """A source image's file path, or '<dataset>:<stem>' for in-memory images."""
    source = dataset.samples[index].source
    return source if isinstance(source, str) else f"{dataset.name}:{dataset.samples[index].stem}"


def save_png_atomic(image: torch.Tensor, path: Path) -> None:
    """Write an image [3,H,W] in [0,1] as an 8-bit PNG (rounded as diffusers does), atomically."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with atomic_open(path) as handle:
        Image.fromarray(np.ascontiguousarray(array)).save(handle, format="PNG")


def ensure_run_config(out_dir: Path, config: dict, *, added_later: dict | None = None) -> None:
    """Record the generation parameters in OUT, or check that a resumed run uses the same ones.

    `added_later`: the value of each parameter a folder written before it existed used (its default; see
    distdiff.runs.recipe.recipe_defaults), so such a folder still resumes under the default."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_CONFIG
    config = json.loads(json.dumps(config))  # the JSON view (tuples become lists) is what is compared
    with FileLock(str(out_dir / LOCK)):
        if path.is_file():
            stored = json.loads(path.read_text())
            diff = changed_settings(stored, config, defaults=added_later)
            if diff:
                raise ExpansionError(f"{out_dir} holds images made with other parameters ({path}); stored vs "
                                     f"requested: {diff}. Use another --output_dir or the same parameters.")
            return
        atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True))


def load_or_compute_prototypes(out_dir: Path, metadata: dict, compute: Callable[[dict], Prototypes]) -> Prototypes:
    """OUT/prototypes.pt if its metadata matches, else compute (once, under a lock shared by all --split jobs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PROTOTYPES
    metadata = json.loads(json.dumps(metadata))
    with FileLock(str(out_dir / LOCK)):
        prototypes = None
        if path.is_file():
            try:
                prototypes = Prototypes.load(path)
            except PrototypeFileError as err:  # e.g. a copy cut short by a full disk: recompute it
                logger.warning("%s; recomputing it", err)
        if prototypes is not None:
            diff = changed_settings(prototypes.metadata, metadata)
            if diff:
                raise ExpansionError(f"{path} was computed from something else; stored vs requested: {diff}. "
                                     f"Use another --output_dir, or delete {path} if OUT holds no images yet.")
            logger.info("reusing prototypes from %s", path)
            return prototypes
        prototypes = compute(metadata)
        prototypes.save(path)
        logger.info("saved prototypes to %s", path)
        return prototypes


def shared_prototypes(state, out_dir: Path, metadata: dict, compute: Callable[[dict], Prototypes]) -> Prototypes:
    """Prototypes for every process of an accelerate launch: the main process loads or computes, and sends them.

    Sent over the process group, not read back from OUT, so nodes need neither the file lock nor
    to see the main node's file at once on a shared filesystem.
    """
    box = [load_or_compute_prototypes(out_dir, metadata, compute) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    return box[0]


def pending(out_dir: Path, items: Sequence[WorkItem]) -> list[WorkItem]:
    """Items not yet finished (no PNG, or no manifest line)."""
    done = read_manifest(out_dir / MANIFEST)
    return [it for it in items if not (it.image in done and (out_dir / it.image).is_file())]


def report_due(out_dir: Path, items: Sequence[WorkItem], *, report: Path, made_images: bool) -> bool:
    """Whether this process writes the report of the work list `items`: it is all finished, and no one took it yet.

    The turn is a marker created with O_EXCL (atomic on local disks, NFSv3+ and Lustre), so of the
    runs that finish together exactly one writes it; one that lost the turn while making images
    trusts the winner, who may still be writing. A run that made no image (a rerun of a finished
    folder) writes the report only when it is missing (--no_report before, or its writer died).
    """
    missing = len(pending(out_dir, items))
    if missing:
        logger.info("no report yet: %d of the work list's %d images are not finished (other shards); the run "
                    "that finishes the last of them writes it", missing, len(items))
        return False
    digest = hashlib.sha256("\n".join(sorted(it.image for it in items)).encode()).hexdigest()[:16]
    try:
        os.close(os.open(out_dir / REPORT_TURN.format(digest=digest), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return not made_images and not report.is_file()
    return True


def check_copies(out_dir: Path, num_copies: int) -> None:
    """Refuse to resume a folder that holds more copies per image than --num_images_per_prompt asks for."""
    copies = [r.get("copy") for r in read_manifest(out_dir / MANIFEST).values()]
    most = max((c for c in copies if isinstance(c, int)), default=-1) + 1
    if most > num_copies:
        raise ExpansionError(f"{out_dir} already holds {most} copies per source image, more than "
                             f"--num_images_per_prompt {num_copies}; train_expand.py would read all {most}. "
                             f"Pass --num_images_per_prompt {most} to continue it, or use another --output_dir.")


def claim_source(out_dir: Path, item: WorkItem) -> FileLock | None:
    """Hold the claim on `item`'s source image, or None when another running process holds it."""
    path = out_dir / CLAIMS / item.class_name / fitting_name(item.stem, ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), blocking=False)
    try:
        lock.acquire()
    except Timeout:
        return None
    return lock


def remove_stale_temps(out_dir: Path, items: Sequence[WorkItem]) -> None:
    """Delete the temp files a killed run left for `items`' images; only while holding their source's claim."""
    for it in items:
        path = out_dir / it.image
        for stale in path.parent.glob(temp_pattern(path)):
            stale.unlink(missing_ok=True)


def claimed_batches(out_dir: Path, todo: Sequence[WorkItem], batch_size: int):
    """Yield (batch, sources finished with it) from `todo`, claiming each source first and skipping done items.

    Without competition the batches are exactly todo's consecutive slices, so a resumed run
    forms the same batches as an unbroken one from its first unfinished item.
    """
    reader = ManifestReader(out_dir / MANIFEST)
    groups: dict[int, list[WorkItem]] = {}
    for it in todo:
        groups.setdefault(it.source_index, []).append(it)
    held: dict[int, FileLock] = {}
    remaining: dict[int, int] = {}
    buffer: list[WorkItem] = []
    skipped = 0
    try:
        for source, its in groups.items():
            lock = claim_source(out_dir, its[0])
            if lock is None:
                skipped += len(its)
                continue
            done = reader.refresh()  # after the claim: another run may have finished this source meanwhile
            its = [it for it in its if not (it.image in done and (out_dir / it.image).is_file())]
            if not its:
                lock.release()
                continue
            remove_stale_temps(out_dir, its)  # we hold the claim, so a temp file of these is a killed run's
            held[source], remaining[source] = lock, len(its)
            buffer.extend(its)
            while len(buffer) >= batch_size:
                yield from _emit(buffer[:batch_size], held, remaining)
                buffer = buffer[batch_size:]
        if buffer:
            yield from _emit(buffer, held, remaining)
    finally:
        for lock in held.values():
            lock.release()
        if skipped:
            logger.info("skipped %d images whose sources another run on %s is making", skipped, out_dir)


def _emit(batch: list[WorkItem], held: dict[int, FileLock], remaining: dict[int, int]):
    finished = []
    for it in batch:
        remaining[it.source_index] -= 1
        if remaining[it.source_index] == 0:
            finished.append(it.source_index)
    yield batch
    for source in finished:  # released only once the caller has written the batch's manifest lines
        held.pop(source).release()


def shared_class_tokens(state, out_dir: Path, learn: Callable[[], dict[str, torch.Tensor]], *,
                        cached: Path | None = None) -> dict[str, torch.Tensor]:
    """DA-Fusion's learned class tokens for every process: OUT/class_tokens.pt if there, else the cached file of
    the same learning (`cached`: same model, train split, steps, size and seed; another folder may have learnt
    it), else learned once (under the locks every --split job and every folder share) and saved to both; sent to
    the other processes of a launch."""
    def cached_or_learn() -> dict[str, torch.Tensor]:
        if cached is None:
            return learn()
        cached.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cached) + ".lock"):
            if cached.is_file():
                logger.info("reusing the class tokens learnt for another folder: %s", cached)
                return load_embeddings(cached)
            learned = learn()
            save_embeddings(learned, cached)
            return learned

    def load_or_learn() -> dict[str, torch.Tensor]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / CLASS_TOKENS
        with FileLock(str(out_dir / LOCK)):
            if path.is_file():
                logger.info("reusing the learned class tokens in %s", path)
                return load_embeddings(path)
            learned = cached_or_learn()
            save_embeddings(learned, path)
            logger.info("saved the learned class tokens to %s", path)
            return learned

    box = [load_or_learn() if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    return box[0]
