"""distdiff.jobs.cost and expand.py --dry_run: the calls per image by hand, the FLOPs against a real run's, the SD v1
UNet's FLOPs against a published figure, and a dry run that writes nothing."""

import functools
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import expand
from distdiff.data.registry import load_dataset
from distdiff.jobs import cost
from distdiff.jobs import expand as expand_job
from distdiff.jobs.cost import Calls
from distdiff.jobs.expand_config import resolve
from distdiff.runs import expansion
from distdiff.utils.meta_device import LiveTensorBytes, efficient_attention, gpu_attention

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
def guide_file(tmp_path_factory):
    """A file where the guide checkpoint should be: resolve only checks that it exists."""
    path = tmp_path_factory.mktemp("guide") / "model_best.pth.tar"
    path.touch()
    return path


def calls_of(guide_file, *flags, cfg=True, has_guide=True) -> Calls:
    flags = ["-d", "digits", "--model", "m", "--guide_checkpoint", str(guide_file), *flags]
    job = resolve(expand.parse_config(flags))
    return cost.count_calls(job, cfg=cfg, has_guide=has_guide)


# At the defaults (50 DDIM steps, strength 0.5: 25 sampled, CFG: 2 UNet passes a step, M 20, period 2, 1 iteration),
# by hand from the sampler and the hooks; fields: UNet fwd, UNet bwd, decode fwd, decode bwd, guide fwd, guide bwd.
HAND_COUNTS = {
    # 25 steps + 2 look-ahead steps + the recorder's extra step; decode: final + 2 look-ahead + before/after;
    # guide: 2 look-ahead + before/after/final.
    "transform": ((), Calls(56, 4, 5, 2, 5, 2)),
    "transform_no_energy_log": (("--no_energy_log",), Calls(54, 4, 3, 2, 2, 2)),
    # 3 iterations of a 3-step look-ahead: 9 steps, each decoded, scored and backpropagated.
    "transform_iters_period": (("--transform_iters", "3", "--guidance_period", "3"), Calls(70, 18, 12, 9, 12, 9)),
    # the 2 guided steps are 2 of the 25, each with a backward; the recorder as transform's.
    "direct": (("--guidance", "direct"), Calls(52, 4, 5, 2, 5, 2)),
    "direct_no_energy_log": (("--guidance", "direct", "--no_energy_log"), Calls(50, 4, 3, 2, 2, 2)),
    "none": (("--guidance", "none"), Calls(50, 0, 1, 0, 1, 0)),  # the final image's D_c/D_g: one guide pass
    "none_no_energy_log": (("--guidance", "none", "--no_energy_log"), Calls(50, 0, 1, 0, 0, 0)),
    # z_0 decoded and scored (logits + features) with a backward; the sources' logits + features; the recorder's
    # decode and score after the perturbation, and the final score.
    "gif_sd": (("--guidance", "gif_sd"), Calls(50, 0, 3, 1, 6, 2)),
    "gif_sd_no_energy_log": (("--guidance", "gif_sd", "--no_energy_log"), Calls(50, 0, 2, 1, 4, 2)),
    # 3 candidates, each transform's 56/4/5/2/5/2 plus its selection score.
    "transform_candidates": (("--candidates", "3"), Calls(168, 12, 15, 6, 18, 6)),
    # 2 candidates of (50, 0, 3, 1, 4, 2) + a score each; the sources' 2 passes once.
    "gif_sd_candidates": (("--guidance", "gif_sd", "--candidates", "2"), Calls(100, 0, 6, 2, 12, 4)),
    # strength 1.0 samples 50 steps, 0.5 samples 25: 75 UNet passes on average.
    "none_strength_choices": (("--guidance", "none", "--strength_choices", "1.0", "0.5"), Calls(75, 0, 1, 0, 1, 0)),
}


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_calls_per_image_match_the_hand_counts(guide_file, name):
    flags, expected = HAND_COUNTS[name]
    assert calls_of(guide_file, *flags) == expected


def test_calls_without_cfg_or_guide(guide_file):
    assert calls_of(guide_file, cfg=False) == Calls(28, 2, 5, 2, 5, 2)  # one UNet pass a step
    assert calls_of(guide_file, "--guidance", "none", has_guide=False) == Calls(50, 0, 1, 0, 0, 0)  # nothing to score


def test_calls_average_the_images_own_strengths(guide_file):
    job = resolve(expand.parse_config(["-d", "digits", "--model", "m", "--guidance", "none", "--strength_choices",
                                       "1.0", "0.5"]))
    assert cost.count_calls(job, cfg=True, has_guide=False, strengths=[1.0, 1.0, 1.0, 0.5]).unet_forward == 87.5


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
    guide = cost.guide_spec(job, train)
    models = cost.build_meta_models(job, guide)
    geo = cost.geometry(job, models, guide)
    calls = cost.count_calls(job, cfg=geo.cfg, has_guide=True,
                             strengths=expansion.image_strengths(items, job.strengths.choices, job.sampling.strength))
    flops = cost.measure_flops(models, geo, attention=math)
    work = cost.plan(job, train, list(dict.fromkeys(it.source_index for it in items)), 1, has_guide=True)
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


def test_live_tensor_bytes_counts_what_is_alive():
    tracker = LiveTensorBytes()
    with tracker:
        a = torch.zeros(1024, device="meta")  # 4 KiB
        b = a.view(32, 32)  # a view: no new storage
        c = torch.zeros(2048, device="meta")  # 8 KiB
        del c
        d = torch.zeros(512, device="meta")  # 2 KiB
    assert (tracker.peak, tracker.live) == (12 * 1024, 6 * 1024)
    del a, b, d
    assert tracker.live == 0


def test_dry_run_goes_on_without_the_guide_and_refuses_an_unreadable_one(tmp_path, caplog, guide_file):
    report = dry_run("--guide_checkpoint", str(tmp_path / "missing.pth.tar"))
    assert "not found" in caplog.text and any("not found" in note for note in report.notes)
    assert report.calls == Calls(56, 4, 5, 2, 5, 2)  # counted as the run would make them, with its guide
    with pytest.raises(expansion.ExpansionError, match="cannot be read"):
        dry_run("--guide_checkpoint", str(guide_file))  # an empty file


def test_gpu_attention_keeps_no_attention_matrix():
    """On the meta device the math path stores the [L, L] attention for the backward; the GPU's kernel does not."""
    q = torch.zeros(1, 8, 4096, 40, device="meta", dtype=torch.float16, requires_grad=True)
    peaks = []
    for context in (sdpa_kernel(SDPBackend.MATH), gpu_attention()):
        tracker = LiveTensorBytes()
        with tracker, context:
            out = F.scaled_dot_product_attention(q, q, q)
        assert out.shape == q.shape
        peaks.append(tracker.peak)
    matrix = 8 * 4096 * 4096 * 2  # one [H, L, L] attention in fp16
    assert peaks[0] > matrix > 50 * peaks[1]  # the kernel: its output [H, L, E] and a log-sum-exp per query
    assert F.scaled_dot_product_attention is not efficient_attention  # torch's own again
