"""distdiff.jobs.cost and expand.py --dry_run: the calls times the FLOPs against a real run's, the SD v1 UNet's FLOPs
against a published figure, the batch each GPU fits, and a dry run that writes nothing (the hand counts of the calls:
tests/test_cost_calls.py)."""

import functools
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import expand
from distdiff.data.registry import load_dataset
from distdiff.jobs import cost, cost_calls, cost_meta
from distdiff.jobs import expand as expand_job
from distdiff.jobs.cost_calls import Calls
from distdiff.jobs.expand_config import resolve
from distdiff.runs import expansion, generation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sd_configs import write_config_folder  # noqa: E402  benchmarks/sd_configs.py

# NVIDIA's TensorRT talk "Stable Diffusion 推理加速技巧解析" (Stable Diffusion inference acceleration; slides copied at
# https://www.sgpjbg.com/bgdown/155314.html), slide "Stable Diffusion FLOPs", measured at B=1, H=W=64 with
# classifier-free guidance (2 latents per UNet call): CLIP text encoder 0.02714e12, U-Net 1.67952e12 per step
# (50 steps: 83.976e12), VAE decoder 2.53933e12. Our reading: the text encoder's figure is for its 2 prompts (the
# class's and the empty one), as the UNet's is for its 2 latents.
NVIDIA_UNET_CFG_STEP = 1.67952e12
NVIDIA_VAE_DECODER = 2.53933e12
NVIDIA_TEXT_ENCODER_CFG = 0.02714e12
# Their count and torch.utils.flop_counter's may differ in what they take in (elementwise work, norms): 10% allowed.
PUBLISHED_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """An untrained smallcnn guide for digits, as train_original.py writes one."""
    from distdiff.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, build_classifier, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("digits_guide") / "model_best.pth.tar"
    save_checkpoint(path, build_classifier("smallcnn", 10), {
        "arch": "smallcnn", "num_classes": 10, "classes": [str(d) for d in range(10)], "image_size": 32,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "dataset": "digits"})
    return path


# One run per path of count_calls: each method, energy log on and off, candidates, per-image strengths.
REAL_RUNS = {
    "transform": ("--guidance", "transform", "--guidance_step", "4"),
    "direct_no_energy_log": ("--guidance", "direct", "--guidance_step", "4", "--no_energy_log"),
    "gif_sd_candidates": ("--guidance", "gif_sd", "--candidates", "2"),
    "none_strength_choices": ("--guidance", "none", "--strength_choices", "1.0", "0.5"),
}


@pytest.mark.parametrize("name", sorted(REAL_RUNS))
def test_calls_times_pass_flops_equal_a_real_runs_flops(tmp_path, digits_checkpoint, name):
    """The FLOPs torch counts in a real expand.py run of the shipped tiny SD on CPU are the calls per image times
    each pass's FLOPs on the meta device, plus the once-per-run passes: the counts are the sampler's."""
    config = expand.parse_config([
        "-d", "digits", "--guide_checkpoint", str(digits_checkpoint), "--max_source_images", "2",
        "--num_images_per_prompt", "2", "--steps", "10", "--output_dir", str(tmp_path / "out"),
        "--cache_dir", str(tmp_path / "cache"), "--no_report", "--precision", "fp32", *REAL_RUNS[name]])
    math = functools.partial(sdpa_kernel, SDPBackend.MATH)  # CPU's fused attention is not counted; its math is
    with math(), FlopCounterMode(display=False) as counter:
        assert expand_job.run(config)["written"] == 4
    job = resolve(config)
    train = load_dataset("digits", "train")
    items = expansion.work_items(train, expansion.select_sources(train, 2), num_copies=2, seed=job.seed)
    guide = cost_meta.guide_spec(job, train)
    models = cost_meta.build_meta_models(job, guide)
    geo = cost_meta.geometry(job, models, guide)
    calls = cost_calls.count_calls(job, cfg=geo.cfg, has_guide=True,
                                   strengths=generation.image_strengths(items, job.strengths.choices, job.sampling.strength))
    flops = cost_meta.measure_flops(models, geo, attention=math)
    work = cost_calls.plan(job, train, list(dict.fromkeys(it.source_index for it in items)), 1, has_guide=True)
    predicted = len(items) * sum(cost.flops_by_model(calls, flops).values()) + cost.one_off_flops(work, flops)
    assert counter.get_total_flops() == pytest.approx(predicted, rel=1e-5)


def dry_run(*flags) -> cost.CostReport:
    return expand_job.run(expand.parse_config(["-d", "digits", "--dry_run", *flags]))


def test_tiny_model_flops_are_positive_and_grow_with_the_image(digits_checkpoint):
    small = dry_run("--guide_checkpoint", str(digits_checkpoint))
    large = dry_run("--guide_checkpoint", str(digits_checkpoint), "--resolution", "64")
    assert small.geometry.latent == (4, 8, 8) and large.geometry.latent == (4, 16, 16)
    assert all(f.forward > 0 and f.backward >= 0 for f in small.pass_flops.values())
    # Convolutions and linear layers grow with the pixels (4x); self-attention with their square, a small share here.
    for name in ("unet", "vae_decode"):
        assert large.pass_flops[name].forward / small.pass_flops[name].forward == pytest.approx(4.0, rel=0.15)
    assert large.pass_flops["guide"] == small.pass_flops["guide"]  # the guide sees its own 32 px either way


def test_dry_run_writes_nothing_and_prints_the_numbers(tmp_path, capsys, digits_checkpoint):
    out, data = tmp_path / "out", tmp_path / "data"
    report = expand.main(expand.parse_args(["-d", "digits", "--dry_run", "--output_dir", str(out), "--data_root",
                                            str(data), "--guide_checkpoint", str(digits_checkpoint)]))
    assert list(tmp_path.iterdir()) == []  # no output folder, no latent cache (<data_root>/latent_cache)
    printed = capsys.readouterr().out
    assert report.work.images == 500 and report.work.shard_images == [500]  # digits' 100 train images x 5
    for line in ("100 sources x 5 copies = 500 images", "FLOPs per image", "peak memory", "A100 SXM", "H100 SXM",
                 "RTX 4090", "an estimate, not measured"):
        assert line in printed
    assert re.search(r"UNet \(per latent\) +56 +4 ", printed)  # the transform's calls (HAND_COUNTS)
    assert report.flops_per_image > 0 and report.activations > 0


def test_dry_run_splits_the_work_into_shards(digits_checkpoint):
    report = dry_run("--guide_checkpoint", str(digits_checkpoint), "--total_split", "3", "--max_source_images", "10")
    assert report.work.shard_images == [20, 15, 15]  # 10 sources dealt round-robin (4, 3, 3), 5 copies each


def test_dry_run_measures_each_batch_a_run_may_halve_to(digits_checkpoint, capsys):
    report = dry_run("--guide_checkpoint", str(digits_checkpoint), "--batch_size", "6")
    assert list(report.batch_activations) == generation.halved_batches(6) == [6, 3, 1]
    sizes = list(report.batch_activations.values())
    assert sizes[0] > sizes[1] > sizes[2] > 0 and report.activations == sizes[0]
    assert 1.5 < sizes[0] / sizes[1] < 2.5  # twice the images: about twice the step's tensors


def test_the_batch_a_run_settles_on_is_the_largest_halving_that_fits(digits_checkpoint):
    gib = 2 ** 30
    report = replace(dry_run("--guide_checkpoint", str(digits_checkpoint)), weights={"UNet": 2 * gib},
                     batch_activations={8: 40 * gib, 4: 20 * gib, 2: 10 * gib, 1: 5 * gib}, batch_size=8)
    assert cost.USABLE_MEMORY == 0.9
    assert report.settled_batch(80 * gib) == 8  # 42 GiB of 72 usable
    assert report.settled_batch(24 * gib) == 2  # 22 GiB > 21.6 usable; 12 fits
    assert report.settled_batch(8 * gib) == 1  # 7 GiB of 7.2 usable
    assert report.settled_batch(6 * gib) is None  # 7 GiB > 5.4 usable even at batch 1
    assert re.search(r"RTX 4090 .* 24 GB +2$", report.format(), flags=re.M)


@pytest.fixture(scope="module")
def sd_v1_report(tmp_path_factory, digits_checkpoint):
    """The dry run of SD v1.4's published configuration (benchmarks/sd_configs.py, a folder without weights)."""
    folder = write_config_folder(tmp_path_factory.mktemp("sd-v1") / "sd-v1-configs")
    return dry_run("--model", str(folder), "--guide_checkpoint", str(digits_checkpoint))


def test_sd_v1_unet_flops_match_the_published_figure(sd_v1_report):
    """SD v1's UNet at 64x64 latents: ~0.80 TFLOP a latent by our count, NVIDIA's 1.68 TFLOP per CFG step (two
    latents) within PUBLISHED_TOLERANCE; likewise the VAE decoder and the text encoder."""
    flops = sd_v1_report.pass_flops
    assert sd_v1_report.geometry.latent == (4, 64, 64) and sd_v1_report.geometry.resolution == 512
    assert 2 * flops["unet"].forward == pytest.approx(NVIDIA_UNET_CFG_STEP, rel=PUBLISHED_TOLERANCE)
    assert flops["vae_decode"].forward == pytest.approx(NVIDIA_VAE_DECODER, rel=PUBLISHED_TOLERANCE)
    assert 2 * flops["text_encoder"].forward == pytest.approx(NVIDIA_TEXT_ENCODER_CFG, rel=PUBLISHED_TOLERANCE)


def test_sd_v1_weights_are_its_published_parameters_in_fp16(sd_v1_report):
    weights = sd_v1_report.weights  # parameter counts: tests/test_benchmark.py, from the published configs
    assert (weights["UNet"], weights["VAE"], weights["text encoder"]) == (859_520_964 * 2, 83_653_863 * 2,
                                                                           123_060_480 * 2 + 77 * 8)
    assert 2 ** 30 < sd_v1_report.activations < 64 * 2 ** 30


def test_dry_run_says_gif_sd_clip_passes_are_counted_as_the_guides(digits_checkpoint):
    report = dry_run("--guide_checkpoint", str(digits_checkpoint), "--guidance", "gif_sd", "--gif_clip", "some/clip")
    assert [note for note in report.notes if "--gif_clip" in note] == [
        "--gif_clip some/clip: GIF-SD's classifier passes are counted as the guide's, not as the CLIP model's"]
    assert not any("--gif_clip" in note for note in dry_run("--guide_checkpoint", str(digits_checkpoint),
                                                             "--guidance", "gif_sd").notes)


def test_dry_run_goes_on_without_the_guide_and_refuses_an_unreadable_one(tmp_path, caplog, guide_file):
    report = dry_run("--guide_checkpoint", str(tmp_path / "missing.pth.tar"))
    assert "not found" in caplog.text and any("not found" in note for note in report.notes)
    assert report.calls == Calls(56, 4, 5, 2, 5, 2)  # counted as the run would make them, with its guide
    with pytest.raises(expansion.ExpansionError, match="cannot be read"):
        dry_run("--guide_checkpoint", str(guide_file))  # an empty file
