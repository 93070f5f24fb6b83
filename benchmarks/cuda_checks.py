"""Checks only a CUDA GPU can run (benchmarks/gpu_check.sh runs them; the CPU test suite does not collect them).

    python -m pytest -q benchmarks/cuda_checks.py

The tiny SD on the GPU in fp16 and bf16 (the dtype a GPU expansion uses) against the same seeds in
fp32 on the CPU, for every guidance method: the per-image generators are CPU generators, so both
devices draw the same noise and differ only by kernels and precision. Then expand.py end to end on
the GPU in fp16. Tolerances: twice the CPU reduced-precision differences of tests/test_precision.py
plus the GPU's own kernels; a first GPU run that exceeds them is a finding to look at, not a
number to widen blindly.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the CPU tests' fixtures and helpers

import conftest  # noqa: E402
import test_precision  # noqa: E402

from distdiff.pipelines.distdiff_img2img import load_stable_diffusion  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
METHODS, _run = test_precision.METHODS, test_precision._run
guide = test_precision.guide  # the CPU tests' random guide with prototypes (a pytest fixture)
tiny_sd_dir, tiny_clip_dir = conftest.tiny_sd_dir, conftest.tiny_clip_dir  # the CPU tests' saved tiny models
MAX_DIFFERENCE = {"fp16": 0.1, "bf16": 0.12}  # per pixel in [0,1], largest over the batch
MEAN_DIFFERENCE = 0.02


@pytest.fixture(scope="module")
def cpu_sd():
    return load_stable_diffusion(str(REPO / "checkpoint" / "tiny-sd-digits"), device="cpu", precision="fp32")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_gpu_reduced_precision_stays_near_cpu_fp32(cpu_sd, guide, method, precision):
    gpu_sd = load_stable_diffusion(str(REPO / "checkpoint" / "tiny-sd-digits"), device="cuda", precision=precision)
    assert gpu_sd.unet.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    guide.model.to("cuda")
    try:
        gpu = _run(gpu_sd, guide, method)
    finally:
        guide.model.to("cpu")
    reference = _run(cpu_sd, guide, method)
    difference = (gpu.images - reference.images).abs()
    assert torch.isfinite(gpu.images).all()
    assert difference.max() <= MAX_DIFFERENCE[precision] and difference.mean() <= MEAN_DIFFERENCE
    assert all(torch.isfinite(torch.tensor(values)).all() for values in gpu.records.values())


@pytest.fixture(scope="module")
def guide_file(tmp_path_factory):
    """A digits guide trained for 2 epochs (on the GPU)."""
    sys.path.insert(0, str(REPO))
    import train_original

    root = tmp_path_factory.mktemp("guide")
    train_original.main(train_original.parse_args(["digits", "smallcnn", "0.1", "False", "0", "--epochs", "2",
                                                   "--output_root", str(root)]))
    return next(root.rglob("model_best.pth.tar"))


def test_expand_py_on_the_gpu_in_fp16(tmp_path, guide_file):
    sys.path.insert(0, str(REPO))
    import expand

    result = expand.main(expand.parse_args(["-d", "digits", "--guide_checkpoint", str(guide_file), "--precision",
                                            "fp16", "--max_source_images", "10", "--num_images_per_prompt", "2",
                                            "--batch_size", "20", "--output_dir", str(tmp_path / "out"),
                                            "--cache_dir", str(tmp_path / "cache"), "--no_report"]))
    assert result["written"] == 20
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {r["params"]["dtype"] for r in records} == {"float16"}
    assert all(r["D_c_final"] == r["D_c_final"] and r["eps_saturated"] is not None for r in records)  # not NaN


def test_gif_sd_scored_by_clip_on_the_gpu_in_fp16(tmp_path, guide_file, tiny_clip_dir):
    """--gif_clip on the GPU: the CLIP scorer reads decoded images on the GPU and the sources from the CPU."""
    sys.path.insert(0, str(REPO))
    import expand

    result = expand.main(expand.parse_args(["-d", "digits", "--guide_checkpoint", str(guide_file), "--precision",
                                            "fp16", "--max_source_images", "10", "--num_images_per_prompt", "2",
                                            "--batch_size", "20", "--guidance", "gif_sd", "--gif_clip",
                                            str(tiny_clip_dir), "--output_dir", str(tmp_path / "out"),
                                            "--cache_dir", str(tmp_path / "cache"), "--no_report"]))
    assert result["written"] == 20
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {r["params"]["gif_clip"] for r in records} == {str(tiny_clip_dir)}
    assert all(0 <= r["eps_saturated"] <= 1 for r in records)


def test_out_of_memory_halves_the_batch_where_the_dry_run_says(tmp_path, guide_file):
    """A real CUDA out-of-memory error: the process's GPU memory capped (set_per_process_memory_fraction) at the
    weights plus 1.5x the step's tensors at batch 8 by the dry run; a run asked for batch 64 halves until it fits,
    writes every image once, and settles at the dry run's prediction for that memory (8), or one halving below it
    (the allocator's fragmentation, which the dry run does not model)."""
    sys.path.insert(0, str(REPO))
    import expand

    flags = ["-d", "digits", "--guide_checkpoint", str(guide_file), "--resolution", "128", "--precision", "fp16",
             "--max_source_images", "16", "--num_images_per_prompt", "4", "--batch_size", "64", "--steps", "10",
             "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--no_report"]
    report = expand.main(expand.parse_args([*flags, "--dry_run"]))
    cap = sum(report.weights.values()) + 1.5 * report.batch_activations[8]
    assert report.settled_batch(cap / 0.9) == 8  # the dry run's own prediction under its 90% usable rule
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
    try:
        result = expand.main(expand.parse_args(flags))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    print(f"dry run: batch 8 in {cap / 2 ** 20:.0f} MiB; the run settled on {result['batch_size']}")
    assert result["written"] == 64 and result["batch_size"] in (4, 8)
    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert len({json.loads(line)["image"] for line in lines}) == len(lines) == 64
