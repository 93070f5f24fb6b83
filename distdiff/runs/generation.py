"""Making an expansion's images batch by batch (docs/METHOD.md#pipeline, step 3): each batch's prompts, strengths
and sources, the pipeline call, its PNGs and manifest lines; and going on at half the batch when one does not fit.

The work list, shards, claims and atomic outputs these rely on are distdiff/runs/expansion.py's. An image does not
depend on the batch it is made in (its own seeds; up to float rounding, and GIF-SD's diversity term, which scores
the batch's copies of a source together), so a run that halves its batch after an out-of-memory error makes the
same images as one started at the smaller batch: it goes on from its first unfinished image, and the batch that ran
out wrote nothing.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from accelerate.utils import find_executable_batch_size
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from distdiff.data.datasets import LabeledImages
from distdiff.method.dafusion import draw_strength
from distdiff.method.guidance import Guidance, GuideEnergy, Scorer
from distdiff.method.observers import CandidateScore, EnergyRecorder
from distdiff.method.records import RECORD_KEYS, Record
from distdiff.pipelines.distdiff_img2img import DistDiffImg2ImgPipeline, DistDiffOutput
from distdiff.pipelines.sampling import PromptEmbeddings, SamplingConfig, image_seed, make_generators
from distdiff.runs.expansion import (ExpansionError, WorkItem, claimed_batches, pending, save_png_atomic,
                                     source_name)
from distdiff.runs.latent_cache import LatentCache
from distdiff.runs.manifest import append_manifest, manifest_part, repair_manifest
from distdiff.runs.selection import generate_best_of

logger = logging.getLogger(__name__)


def class_prompt_table(guidance: Guidance | None, class_prompts: Sequence[str], class_names: Sequence[str]
                       ) -> tuple[list[str], int]:
    """Every prompt an image may get, class-major, and how many each class has (the guidance's variants: GIF-SD's
    templates; else the dataset's one prompt per class)."""
    variants = guidance.prompt_variants(class_prompts, class_names) if guidance is not None else [
        [prompt] for prompt in class_prompts]
    if len({len(v) for v in variants}) != 1:
        raise ValueError(f"every class needs the same number of prompt variants, got {[len(v) for v in variants]}.")
    return [prompt for class_variants in variants for prompt in class_variants], len(variants[0])


def prompt_rows(guidance: Guidance | None, items: Sequence[WorkItem], variants: int) -> torch.Tensor:
    """Each image's row [B] in class_prompt_table's list: its class's block, the variant its own prompt seed draws."""
    draw = guidance.draw_prompt if guidance is not None else Guidance().draw_prompt
    return torch.tensor([it.label * variants + draw(torch.Generator().manual_seed(image_seed(it.seed, "prompt")))
                         for it in items])


def source_probabilities(scorer: Scorer, dataset: LabeledImages, indices: Sequence[int]) -> torch.Tensor:
    """The scorer's softmax [B,K] on the whole source images `indices` (GIF-SD's prediction on the original), each
    preprocessed as the scorer sees a decoded image."""
    def pixels(index: int) -> torch.Tensor:  # [1,3,H,W] in [-1,1]
        image = TF.to_dtype(TF.to_image(dataset.load_image(index).convert("RGB")), torch.float32, scale=True)
        return image.unsqueeze(0) * 2.0 - 1.0

    with torch.no_grad():
        return torch.cat([scorer.logits_and_features(pixels(i))[0] for i in indices]).softmax(dim=-1)


def image_strengths(items: Sequence[WorkItem], choices: Sequence[float], default: float) -> list[float]:
    """Each image's img2img strength: drawn from `choices` (equally likely) by its own strength seed, else `default`."""
    if not choices:
        return [default] * len(items)
    equal = [1.0 / len(choices)] * len(choices)
    return [draw_strength(torch.Generator().manual_seed(image_seed(it.seed, "strength")), strengths=choices,
                          probabilities=equal) for it in items]



def _in_order(parts: list[tuple[list[int], DistDiffOutput]], size: int) -> DistDiffOutput:
    """One batch's output from its strength groups' outputs (each with its positions in the batch)."""
    images = [None] * size
    records: dict = {}
    for positions, out in parts:
        for k, position in enumerate(positions):
            images[position] = out.images[k]
        for key, values in out.records.items():
            column = records.setdefault(key, [None] * size)
            for k, position in enumerate(positions):
                column[position] = values[k]
    return DistDiffOutput(images=torch.stack(images), records=records)


def halved_batches(batch_size: int) -> list[int]:
    """The batches a run tries, one after each out-of-memory error: `batch_size`, its half (rounded down), ..., 1."""
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


@dataclass(frozen=True)
class Generated:
    """What run_expansion did: images written, and the batch it finished at (--batch_size, or less after an
    out-of-memory error)."""

    written: int
    batch_size: int


def run_expansion(sd: DistDiffImg2ImgPipeline, dataset: LabeledImages, items: Sequence[WorkItem], *, out_dir: Path,
                  prompts: PromptEmbeddings, cache: LatentCache, params: dict, sampling: SamplingConfig,
                  guidance: Guidance | None, guide: GuideEnergy | None, batch_size: int, record_energy: bool = True,
                  progress: bool = True, shard: int = 0, num_shards: int = 1, candidates: int = 1,
                  select: str = "energy", prompt_variants: int = 1,
                  strength_choices: Sequence[float] = (), classifier: Scorer | None = None) -> Generated:
    """Make every unfinished item not claimed by another run, batch by batch, halving the batch on out-of-memory.

    `items` are shard `shard` of `num_shards`' work: its records go to that shard's own manifest file.
    With `candidates` > 1 each image is the best of that many by `select` (distdiff/runs/selection.py).
    `prompts` holds `prompt_variants` rows per class (class_prompt_table); each image draws its own, and its
    strength from `strength_choices` where given (a batch then runs as one pipeline call per strength).
    A final-latent hook that reads the sources scores with `classifier` (GIF-SD's CLIP) where given, else the guide.
    """
    scorer = classifier if classifier is not None else guide
    if guidance is not None and guidance.uses_sources and scorer is None:
        raise ExpansionError(f"--guidance {guidance.name} scores with the guide or a CLIP model; pass "
                             f"--guide_checkpoint or --gif_clip.")
    if candidates > 1 and guide is None:
        raise ExpansionError(f"--candidates {candidates} scores candidates with the guide; pass --guide_checkpoint.")
    out_dir = Path(out_dir)
    part = manifest_part(out_dir, shard, num_shards)
    repair_manifest(part)
    written, size = 0, batch_size

    def make(batch: list[WorkItem]) -> DistDiffOutput:
        strengths = image_strengths(batch, strength_choices, sampling.strength)
        parts = []
        for strength in dict.fromkeys(strengths):
            positions = [k for k, s in enumerate(strengths) if s == strength]
            group = [batch[k] for k in positions]
            labels = torch.tensor([it.label for it in group])
            latent_params = cache.get(dataset, [it.source_index for it in group])
            rows = prompt_rows(guidance, group, prompt_variants) if prompt_variants > 1 else None
            sources = torch.tensor([it.source_index for it in group])
            source_probs = (source_probabilities(scorer, dataset, sources.tolist())
                            if guidance is not None and guidance.uses_sources else None)

            def generate(seeds: list[int]):
                observers = [EnergyRecorder(guide, labels)] if record_energy and guide is not None else []
                observers += [CandidateScore(guide, labels, select)] if candidates > 1 else []
                return sd(latent_params=latent_params, labels=labels, generator=make_generators(seeds),
                          prompt_embeds=prompts, guidance=guidance, guide=guide, observers=observers,
                          prompt_rows=rows, source_probs=source_probs, groups=sources, classifier=classifier,
                          **asdict(replace(sampling, strength=strength)))

            out = generate_best_of(generate, [it.seed for it in group], candidates=candidates, by=select)
            if strength_choices:
                out.records[Record.STRENGTH] = [strength] * len(group)
            parts.append((positions, out))
        return parts[0][1] if len(parts) == 1 else _in_order(parts, len(batch))

    def attempt(size: int) -> None:
        """Make what is unfinished at batch `size`; an out-of-memory error leaves, the batch it hit unwritten."""
        nonlocal written
        todo = pending(out_dir, items)
        logger.info("%d of %d images to make (%d already done) at batch %d", len(todo), len(items),
                    len(items) - len(todo), size)
        cache.ensure(dataset, sorted({it.source_index for it in todo}), batch_size=size, progress=progress)
        # Contexts, so an error closes the bar before the one-line message, and releases the claims before a retry.
        with tqdm(total=len(items), initial=len(items) - len(todo), desc="expanding", unit="img",
                  disable=not progress) as bar, contextlib.closing(claimed_batches(out_dir, todo, size)) as batches:
            for batch in batches:
                result = make(batch)
                save_batch(batch, result, out_dir=out_dir, part=part, dataset=dataset, params=params)
                written += len(batch)
                bar.update(len(batch))

    smaller = iter(halved_batches(batch_size)[1:])

    def halve() -> int:
        nonlocal size
        ran_out_at, size = size, next(smaller, 0)
        if not size:
            raise ExpansionError("out of memory at batch 1: lower --resolution, pass --gradient_checkpointing or "
                                 "--precision fp16/bf16 on a GPU, or see `expand.py --dry_run` for the peak memory.")
        logger.warning("out of memory at batch %d: going on at batch %d from the first unfinished image",
                       ran_out_at, size)
        return size

    find_executable_batch_size(attempt, starting_batch_size=batch_size, reduce_batch_size_fn=halve)()
    if size < batch_size:
        logger.warning("settled on batch %d (--batch_size %d ran out of memory); pass --batch_size %d next time",
                       size, batch_size, size)
    return Generated(written, size)


def save_batch(batch: Sequence[WorkItem], result: DistDiffOutput, *, out_dir: Path, part: Path,
               dataset: LabeledImages, params: dict) -> None:
    """Write each image of `batch` (PNG first) and then the batch's lines in the manifest file `part`."""
    records = []
    for k, it in enumerate(batch):
        save_png_atomic(result.images[k], out_dir / it.image)
        record = {"image": it.image, "source": source_name(dataset, it.source_index), "class": it.class_name,
                  "label": it.label, "copy": it.copy, "seed": it.seed, "params": params}
        record.update({key.value: (result.records[key][k] if key in result.records else None)
                       for key in RECORD_KEYS})
        records.append(record)
    append_manifest(part, records)
