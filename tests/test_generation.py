"""distdiff/runs/generation.py: a batch that runs out of memory halves the batch and the run goes on, with no image
lost or made twice."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from distdiff.data.datasets import LabeledImages, Sample
from distdiff.pipelines.distdiff_img2img import DistDiffOutput
from distdiff.pipelines.sampling import SamplingConfig
from distdiff.runs import expansion, generation
from distdiff.runs.manifest import MANIFEST, manifest_files

SOURCES, COPIES = 6, 4


class NoCache:
    """A latent cache with nothing to encode: zero posteriors, one per source."""

    def __init__(self):
        self.batch_sizes = []

    def ensure(self, dataset, indices, *, batch_size, progress=True):
        self.batch_sizes.append(batch_size)

    def get(self, dataset, indices):
        return torch.zeros(len(indices), 8, 2, 2)


class Pipeline:
    """A stand-in for the pipeline: each image drawn from its own generator (bytes identify the image), and torch's
    out-of-memory error, as a GPU raises it, for a batch larger than `fits` (which `shrink_after` calls lower to
    `shrinks_to`, as when another job takes memory mid-run)."""

    def __init__(self, fits: int, *, shrink_after: int | None = None, shrinks_to: int = 1):
        self.fits, self.shrink_after, self.shrinks_to = fits, shrink_after, shrinks_to
        self.calls = []  # (batch size, whether it ran)
        self.made = []  # the seeds of every image made

    def __call__(self, *, generator, **kwargs):
        if self.shrink_after is not None and len(self.calls) == self.shrink_after:
            self.fits = self.shrinks_to
        ran = len(generator) <= self.fits
        self.calls.append((len(generator), ran))
        if not ran:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total)")
        self.made += [g.initial_seed() for g in generator]
        return DistDiffOutput(torch.stack([torch.rand(3, 8, 8, generator=g) for g in generator]))


def work_list():
    dataset = LabeledImages([Sample(np.zeros((8, 8, 3), np.uint8), i % 3, f"src{i}") for i in range(SOURCES)],
                            ["a", "b", "c"], name="oom")
    return dataset, expansion.work_items(dataset, expansion.select_sources(dataset), num_copies=COPIES, seed=3)


def expand(out: Path, pipeline, *, batch_size: int, cache=None) -> generation.Generated:
    dataset, items = work_list()
    return generation.run_expansion(
        pipeline, dataset, items, out_dir=out, prompts=None, cache=cache or NoCache(), params={},
        sampling=SamplingConfig(num_inference_steps=4, guidance_scale=1.0), guidance=None, guide=None,
        batch_size=batch_size, record_energy=False, progress=False)


def folder(out: Path) -> tuple[dict[str, bytes], list[str]]:
    """The PNGs' bytes by name, and the images of every manifest line in order."""
    pngs = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}
    lines = [json.loads(line)["image"] for part in manifest_files(out / MANIFEST)
             for line in part.read_text().splitlines()]
    return pngs, lines


def test_halved_batches_end_at_1():
    assert generation.halved_batches(8) == [8, 4, 2, 1]
    assert generation.halved_batches(6) == [6, 3, 1]  # rounded down, as the dry run predicts them
    assert generation.halved_batches(1) == [1]


def test_out_of_memory_halves_the_batch_and_makes_each_image_once(tmp_path, caplog):
    pipeline, cache = Pipeline(fits=3), NoCache()
    with caplog.at_level(logging.INFO, logger="distdiff.runs.generation"):
        made = expand(tmp_path / "oom", pipeline, batch_size=8, cache=cache)
    assert made == generation.Generated(written=SOURCES * COPIES, batch_size=2)
    assert pipeline.calls[:3] == [(8, False), (4, False), (2, True)]  # 8 -> 4 -> 2, then every batch at 2
    assert all(call == (2, True) for call in pipeline.calls[2:]) and len(pipeline.calls) == 2 + SOURCES * COPIES // 2
    assert cache.batch_sizes == [8, 4, 2]  # the latent cache's encodes go down with it
    assert sorted(pipeline.made) == sorted(it.seed for it in work_list()[1])  # each image made once
    assert "out of memory at batch 8: going on at batch 4" in caplog.text
    assert "settled on batch 2 (--batch_size 8 ran out of memory)" in caplog.text
    pngs, lines = folder(tmp_path / "oom")
    assert sorted(lines) == sorted(pngs) == sorted(it.image for it in work_list()[1])  # no gap, no duplicate line
    assert pngs == folder_at(tmp_path / "b2", batch_size=2)  # the same images as a run started at batch 2


def folder_at(out: Path, *, batch_size: int) -> dict[str, bytes]:
    made = expand(out, Pipeline(fits=batch_size), batch_size=batch_size)
    assert made.batch_size == batch_size
    return folder(out)[0]


def test_memory_lost_mid_run_goes_on_from_the_first_unfinished_image(tmp_path):
    pipeline = Pipeline(fits=8, shrink_after=2, shrinks_to=4)  # two batches of 8 fit, then only 4
    made = expand(tmp_path / "oom", pipeline, batch_size=8)
    assert made == generation.Generated(written=SOURCES * COPIES, batch_size=4)
    assert pipeline.calls == [(8, True), (8, True), (8, False), (4, True), (4, True)]
    assert len(pipeline.made) == len(set(pipeline.made)) == SOURCES * COPIES  # the failed batch wrote nothing
    pngs, lines = folder(tmp_path / "oom")
    assert len(lines) == len(set(lines)) == len(pngs) == SOURCES * COPIES
    assert pngs == folder_at(tmp_path / "b8", batch_size=8)


def test_out_of_memory_at_batch_1_stops_with_what_to_do(tmp_path):
    with pytest.raises(expansion.ExpansionError, match="out of memory at batch 1: lower --resolution") as caught:
        expand(tmp_path / "oom", Pipeline(fits=0), batch_size=2)
    assert isinstance(caught.value.__context__, torch.OutOfMemoryError)  # the GPU's own message stays in the trace
    assert folder(tmp_path / "oom") == ({}, [])


def test_other_errors_are_not_retried(tmp_path):
    class Broken(Pipeline):
        def __call__(self, **kwargs):
            self.calls.append(kwargs["generator"])
            raise RuntimeError("expected all tensors to be on the same device")

    pipeline = Broken(fits=8)
    with pytest.raises(RuntimeError, match="same device"):
        expand(tmp_path / "broken", pipeline, batch_size=8)
    assert len(pipeline.calls) == 1
