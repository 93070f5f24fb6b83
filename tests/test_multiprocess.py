"""Expansion and training on many processes: shards, per-shard manifests, the report written once, accelerate.

The in-process tests simulate ranks as --split shards (64 of them, with killed ranks rerun). The
subprocess tests launch accelerate on the CPU (gloo): `accelerate launch --multi_gpu` is what
starts several processes there; `--cpu --num_processes N` starts one (accelerate 1.x sends CPU
multi-process runs to mpirun only with --mpirun_hostfile).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import expand
from distdiff.runs import expansion, generation
from distdiff.data.augment import eval_transform
from distdiff.models.classifiers import load_classifier
from distdiff.data.datasets import LabeledImages, Sample
from distdiff.runs.manifest import MANIFEST, manifest_files, read_manifest
from distdiff.data.registry import load_dataset
from distdiff.pipelines.sampling import SamplingConfig
from distdiff.pipelines.distdiff_img2img import DistDiffOutput

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

# ---------------------------------------------------------------------------------------------
# A folder made by one process (one manifest.jsonl) resumes under shards, which write their own parts


@pytest.fixture
def expand_argv(tmp_path, tiny_sd_dir, digits_guide_checkpoint):
    def argv(out, *extra):
        return ["-d", "digits", "--model", str(tiny_sd_dir), "--guide_checkpoint", str(digits_guide_checkpoint),
                "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "3",
                "--num_images_per_prompt", "2", "--steps", "4", "--guidance_step", "2", "--guidance_period", "1",
                "--batch_size", "1", "--num_threads", "1", "--no_report", *extra]
    return argv


def pngs(out: Path) -> dict[str, bytes]:
    """Every synthetic image of a folder, by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_a_one_manifest_folder_resumes_under_split_jobs_into_per_shard_parts(tmp_path, expand_argv):
    reference = tmp_path / "reference"
    expand.main(expand.parse_args(expand_argv(reference)))
    old = tmp_path / "old"
    expand.main(expand.parse_args(expand_argv(old)))
    assert manifest_files(old / MANIFEST) == [old / MANIFEST]  # one process: today's single manifest.jsonl
    lines = (old / MANIFEST).read_text().splitlines(keepends=True)
    (old / MANIFEST).write_text("".join(lines[:2]))  # as a run killed after its first source left it
    for line in lines[2:]:
        (old / json.loads(line)["image"]).unlink()

    written = [expand.main(expand.parse_args(expand_argv(old, "--split", str(s), "--total_split", "2")))["written"]
               for s in (0, 1)]
    assert sum(written) == 4
    parts = [p.name for p in manifest_files(old / MANIFEST)]
    assert parts[0] == MANIFEST and set(parts[1:]) <= {"manifest.0-of-2.jsonl", "manifest.1-of-2.jsonl"}
    assert (old / MANIFEST).read_text() == "".join(lines[:2])  # the old file is read, never rewritten
    merged = read_manifest(old / MANIFEST)
    assert merged == read_manifest(reference / MANIFEST)  # the same records, energies included
    assert pngs(old) == pngs(reference)  # batch size 1: the same bytes
    again = expand.main(expand.parse_args(expand_argv(old, "--split", "1", "--total_split", "2")))
    assert again["written"] == 0 and again["summary"]["images"] == 6


# ---------------------------------------------------------------------------------------------
# 64 ranks over 640 images: each image made once; 3 ranks killed midway and rerun fill the gap


class Killed(Exception):
    """A rank dying between its PNGs and their manifest lines (as kill -9 would)."""


class NoCache:
    """The latent cache's interface without a VAE: the stub generator ignores the latents."""

    def ensure(self, dataset, indices, *, batch_size, progress=True):
        """Nothing to encode."""

    def get(self, dataset, indices):
        """Zero posteriors, one per source."""
        return torch.zeros(len(indices), 8, 2, 2)


def seeded_images(*, generator, **kwargs):
    """A stand-in for the pipeline: an 8x8 image drawn from each image's own generator, so bytes identify the image."""
    return DistDiffOutput(torch.stack([torch.rand(3, 8, 8, generator=g) for g in generator]))


def test_64_ranks_make_640_images_once_and_killed_ranks_rerun_fill_the_gap(tmp_path, monkeypatch):
    classes = [f"c{i}" for i in range(10)]
    dataset = LabeledImages([Sample(np.zeros((8, 8, 3), np.uint8), i % 10, f"src{i:03d}") for i in range(160)],
                            classes, name="many")
    sources = expansion.select_sources(dataset)
    work_list = expansion.work_items(dataset, sources, num_copies=4, seed=7)
    assert len(work_list) == 640
    out, report = tmp_path / "out", tmp_path / "out" / "report.json"
    real_append, appends = generation.append_manifest, []

    def append_or_die(path, records):
        appends.append(path)
        if doomed and sum(p == path for p in appends) == 2:  # the rank's second batch: PNGs written, no lines
            raise Killed(path)
        real_append(path, records)

    monkeypatch.setattr(generation, "append_manifest", append_or_die)

    def run_rank(rank):
        shard, num_shards = expansion.global_shard(rank, 64)
        mine = set(expansion.shard_sources(sources, shard=shard, num_shards=num_shards))
        items = [it for it in work_list if it.source_index in mine]
        written = generation.run_expansion(
            seeded_images, dataset, items, out_dir=out, prompts=None, cache=NoCache(), params={},
            sampling=SamplingConfig(num_inference_steps=4, guidance_scale=1.0), guidance=None, guide=None, batch_size=4, record_energy=False, progress=False,
            shard=shard, num_shards=num_shards).written
        turn = expansion.report_due(out, work_list, report=report, made_images=written > 0)
        if turn:
            report.write_text("{}")  # what write_run_report would leave
        return written, turn

    killed, turns, written = {5, 17, 42}, [], 0
    for rank in range(64):
        doomed = rank in killed
        try:
            done, turn = run_rank(rank)
        except Killed:
            continue
        written += done
        turns.append((rank, turn))
    missing = expansion.pending(out, work_list)
    assert {sources.index(it.source_index) % 64 for it in missing} == killed  # the gap is the killed ranks' work
    assert not report.exists() and not any(turn for _, turn in turns)

    doomed = False
    for rank in sorted(killed):  # rerun only the killed ranks
        done, turn = run_rank(rank)
        written += done
        turns.append((rank, turn))
    assert [rank for rank, turn in turns if turn] == [42]  # the one that finished the work list, once
    assert expansion.pending(out, work_list) == []
    lines = [json.loads(line) for part in manifest_files(out / MANIFEST) for line in part.read_text().splitlines()]
    assert len(lines) == len({r["image"] for r in lines}) == 640  # no duplicate, no gap
    assert written == 640 - 4 * len(killed)  # the killed ranks' first batches were kept, their second made again
    made = pngs(out)
    assert set(made) == {it.image for it in work_list}
    assert len(manifest_files(out / MANIFEST)) == 64  # one part per rank, none shared
    for part in manifest_files(out / MANIFEST):
        shard = int(part.name.split(".")[1].split("-")[0])
        assert {json.loads(line)["source"].split(":")[1] for line in part.read_text().splitlines()} <= \
            {dataset.samples[i].stem for i in sources[shard::64]}
    assert not expansion.report_due(out, work_list, report=report, made_images=False)  # reported: no second one
    report.unlink()
    assert not expansion.report_due(out, work_list, report=report, made_images=True)  # its writer may be at it
    assert expansion.report_due(out, work_list, report=report, made_images=False)  # a lost report: the next run


# ---------------------------------------------------------------------------------------------
# accelerate on the CPU: 2 processes, and 2 "nodes" on loopback, write what one process writes


def free_port() -> int:
    """A TCP port nothing listens on now, for accelerate's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch(*flags, script: str, argv) -> subprocess.Popen:
    """`accelerate launch --multi_gpu FLAGS SCRIPT ARGV` (torchrun, gloo on the CPU), started in the repository."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", *map(str, flags), script, *map(str, argv)]
    return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*runs: subprocess.Popen) -> str:
    """Wait for every launch, check each exited 0, and return their stderr together."""
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0] * len(runs), outputs
    return "".join(err for _, err in outputs)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_sd_dir, digits_guide_checkpoint):
    """A one-process expansion of 2 digits x 2 copies at batch size 1, and the flags that made it."""
    root = tmp_path_factory.mktemp("one")

    def argv(out):
        return ["-d", "digits", "--model", str(tiny_sd_dir), "--guide_checkpoint", str(digits_guide_checkpoint),
                "--output_dir", str(out), "--cache_dir", str(root / "cache"), "--max_source_images", "2",
                "--num_images_per_prompt", "2", "--steps", "4", "--guidance_step", "2", "--guidance_period", "1",
                "--batch_size", "1", "--num_threads", "1", "--feature_space", "none"]
    expand.main(expand.parse_args(argv(root / "out")))
    return root / "out", argv


def assert_same_expansion(out: Path, reference: Path) -> None:
    """The same PNG bytes and the same set of manifest records as the reference, and one report."""
    assert pngs(out) == pngs(reference) and len(pngs(out)) == 4
    assert read_manifest(out / MANIFEST) == read_manifest(reference / MANIFEST)
    assert [p.name for p in manifest_files(out / MANIFEST)] == ["manifest.0-of-2.jsonl", "manifest.1-of-2.jsonl"]
    assert (out / "report.json").is_file() and len(list(out.glob(".report-*.taken"))) == 1


def test_accelerate_2_processes_write_what_one_process_writes(tmp_path, one_process):
    reference, argv = one_process
    out = tmp_path / "two"
    log = finish(accelerate_launch("--num_processes", "2", "--main_process_port", free_port(), script="expand.py",
                                   argv=argv(out)))
    assert log.count("writing its report") == 1
    assert_same_expansion(out, reference)


def test_two_accelerate_nodes_on_loopback_write_what_one_process_writes(tmp_path, one_process):
    reference, argv = one_process
    out, port = tmp_path / "nodes", free_port()
    nodes = [accelerate_launch("--num_machines", "2", "--num_processes", "2", "--machine_rank", rank,
                               "--main_process_ip", "127.0.0.1", "--main_process_port", port, script="expand.py",
                               argv=argv(out)) for rank in (0, 1)]
    assert finish(*nodes).count("writing its report") == 1
    assert_same_expansion(out, reference)


# ---------------------------------------------------------------------------------------------
# Training under 2 processes: each test image counted once, files written once, resume


DIE_AFTER_EPOCH_1 = """
import os, signal, sys
from distdiff import cli  # noqa: F401  (the OpenMP wait policy, as the scripts set it)
from distdiff.training import loop as training
import train_original

real_save = training.atomic_torch_save


def save_then_die(obj, path):
    real_save(obj, path)
    os.kill(os.getpid(), signal.SIGKILL)  # the main process dies right after epoch 1's state is on disk


training.atomic_torch_save = save_then_die
train_original.main(train_original.parse_args(sys.argv[1:]))
"""


def small_imagefolder(root: Path) -> Path:
    """2 classes of overlapping brightness: train 6 + 6, test 4 + 3 (7 images: not a multiple of 2 processes)."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", (6, 6)), ("test", (4, 3))):
        for label, count in enumerate(counts):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 235, (16, 16, 3)) + 20 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_training_on_2_processes_counts_each_test_image_once_writes_once_and_resumes(tmp_path):
    data = small_imagefolder(tmp_path / "data")
    argv = [f"imagefolder:{data}", "smallcnn", "0.1", "False", "0", "--epochs", "2", "--batch_size", "4",
            "--image_size", "16", "--num_workers", "0", "--output_root", str(tmp_path / "ckpt")]
    killer = tmp_path / "die_after_epoch_1.py"
    killer.write_text(DIE_AFTER_EPOCH_1)
    died = accelerate_launch("--num_processes", "2", "--main_process_port", free_port(), script=str(killer),
                             argv=argv)
    died.communicate(timeout=300)
    assert died.returncode != 0
    run = tmp_path / "ckpt" / "data" / "smallcnn_unpretrained_lr0.1" / "seed1"
    assert not (run / "results.yaml").exists() and (run / "last_state.pth.tar").is_file()

    log = finish(accelerate_launch("--num_processes", "2", "--main_process_port", free_port(),
                                   script="train_original.py", argv=argv))
    assert "resuming" in log
    text = (run / "log.txt").read_text()
    assert text.count("start:") == 1 and text.count("resume after epoch 1") == 1  # one writer, not two
    assert text.count("epoch 2/2") == 1 and "epoch 1/2" not in text  # epoch 1's line died with its writer
    state = torch.load(run / "last_state.pth.tar", weights_only=True)
    assert [row["test_images"] for row in state["history"]] == [7, 7]  # gather_for_metrics: no padded duplicate
    results = yaml.safe_load((run / "results.yaml").read_text())
    assert results["num_test"] == 7 and results["epochs_done"] == 2

    # The recorded best accuracy is what one process measures with the saved model.
    model, info = load_classifier(run / "model_best.pth.tar")
    test = load_dataset(f"imagefolder:{data}", "test").with_transform(
        eval_transform(info["image_size"], info["mean"], info["std"]))
    with torch.no_grad():
        correct = sum(int(model(image[None]).argmax(1).item() == label) for image, label in test)
    assert 100.0 * correct / 7 == results["best_accuracy"]

    odd = accelerate_launch("--num_processes", "2", "--main_process_port", free_port(), script="train_original.py",
                            argv=argv + ["--batch_size", "5", "--overwrite"])
    _, err = odd.communicate(timeout=300)
    assert odd.returncode != 0 and "--batch_size 5 is the global batch, split over 2 processes" in err
    assert (run / "results.yaml").is_file()  # refused before --overwrite deleted anything
