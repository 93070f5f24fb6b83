"""Tests for benchmarks/expand_throughput.py and sd_configs.py: SD v1 tables, batched == reference, the JSON line."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from distdiff.pipelines.sampling import default_resolution

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "expand_throughput.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when run as a script: it imports sd_configs from beside it
spec = importlib.util.spec_from_file_location("expand_throughput", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)

# fp32 on CPU: batching may change the order of floating-point sums, nothing else; 1e-4 is
# 1/40 of one 8-bit level of the saved PNG, and a wrong seed, label or latent moves pixels by ~0.1-1.
FP32_TOLERANCE = 1e-4
SUMMARY_KEYS = {"benchmark", "quick", "device", "resolution", "steps", "reference_dtype", "batched_dtype",
                "reference_images_per_s", "batched_images_per_s", "best_batch_size", "speedup",
                "max_abs_diff_vs_reference", "torch_threads"}


@pytest.fixture
def one_thread():
    """Run single-threaded, as --quick does, and restore torch's thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_full_size_tables_build_sd_v1_4s_published_parameter_counts():
    unet, vae, text = bench.SD_V1_UNET, bench.SD_V1_VAE, bench.SD_V1_TEXT_ENCODER
    # On the meta device nothing is allocated: the published parameter counts of SD v1.4's parts.
    with torch.device("meta"):
        models = UNet2DConditionModel(**unet), AutoencoderKL(**vae), CLIPTextModel(CLIPTextConfig(**text))
    assert [sum(p.numel() for p in model.parameters()) for model in models] == [859_520_964, 83_653_863, 123_060_480]
    assert default_resolution(models[0], models[1]) == 512  # SD v1's 64x64 latents, VAE factor 8


def test_quick_tables_keep_the_sd_v1_layout_with_fewer_channels():
    for quick, full in ((bench.QUICK_UNET, bench.SD_V1_UNET), (bench.QUICK_VAE, bench.SD_V1_VAE)):
        changed = {k for k in full if quick[k] != full[k]}
        assert changed <= {"block_out_channels", "cross_attention_dim", "sample_size"}
        assert len(quick["block_out_channels"]) == len(full["block_out_channels"])
        assert all(q < f for q, f in zip(quick["block_out_channels"], full["block_out_channels"]))
    assert bench.QUICK_UNET["cross_attention_dim"] == bench.QUICK_TEXT_ENCODER["hidden_size"]
    assert bench.guidance_step_for(50) == 20  # the paper's M = 20 of 50 steps (docs/METHOD.md#defaults)
    assert bench.guidance_step_for(10) == 4


def test_batched_output_equals_the_reference_path(one_thread):
    scale = bench.SCALES["quick"]
    components = bench.build_components(scale)
    torch.manual_seed(0)
    guide = bench.build_classifier(bench.GUIDE_ARCH, bench.NUM_CLASSES)
    prototypes = bench.random_prototypes(bench.NUM_CLASSES, guide.num_features)
    images = bench.source_images(64)
    common = dict(device=torch.device("cpu"), precision="fp32", steps=4, guide_size=64)
    reference = bench.make_runner(components, guide, prototypes, images, gradient_checkpointing=True, **common)
    batched = bench.make_runner(components, guide, prototypes, images, gradient_checkpointing=False, **common)
    assert reference.sd.unet.is_gradient_checkpointing and not batched.sd.unet.is_gradient_checkpointing
    assert reference.guidance.name == "transform" and reference.guidance.period == 2

    one_at_a_time = torch.cat([reference.generate([i]) for i in range(2)])
    together = batched.generate(range(2))
    assert together.shape == one_at_a_time.shape == (2, 3, 64, 64)
    assert float((together - one_at_a_time).abs().max()) <= FP32_TOLERANCE
    # The items really differ (seed, label, source), so equality above is not a constant image.
    assert float((one_at_a_time[0] - one_at_a_time[1]).abs().max()) > 0.05


def test_quick_run_ends_with_one_json_line_of_both_paths(one_thread, capsys, tmp_path):
    args = bench.parse_args(["--quick", "--batch_sizes", "2", "--repeats", "1", "--steps", "4",
                             "--output_json", str(tmp_path / "result.json")])
    bench.main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("UNet parameters: 8,605,284")
    summary = json.loads(lines[-1])
    assert set(summary) == SUMMARY_KEYS
    assert (summary["quick"], summary["device"], summary["resolution"], summary["steps"]) == (True, "cpu", 64, 4)
    assert list(summary["batched_images_per_s"]) == ["2"] and summary["best_batch_size"] == 2
    assert summary["speedup"] == pytest.approx(summary["batched_images_per_s"]["2"] / summary["reference_images_per_s"])
    assert summary["max_abs_diff_vs_reference"] <= FP32_TOLERANCE
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["summary"] == summary
    assert [(r["mode"], r["batch_size"]) for r in written["rows"]] == [("reference", 1), ("batched", 2)]
    assert written["rows"][0]["gradient_checkpointing"] and not written["rows"][1]["gradient_checkpointing"]
    assert all(row["all_finite"] for row in written["rows"])


def test_an_out_of_memory_batch_size_is_reported_and_the_sweep_goes_on():
    def generate(indices):
        if len(indices) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return torch.zeros(len(indices), 3, 8, 8)

    runner = SimpleNamespace(sd=SimpleNamespace(device=torch.device("cpu")), generate=generate)
    row, images = bench.measure_or_oom(runner, batch_size=4, repeats=1)
    assert row == {"batch_size": 4, "status": "OOM"} and images is None
    row, images = bench.measure_or_oom(runner, batch_size=1, repeats=2)
    assert row["status"] == "ok" and row["images"] == 2 and images.shape == (2, 3, 8, 8)


@pytest.mark.parametrize("argv, message", [
    (["--quick", "--device", "cuda"], "--quick runs on CPU"),
    (["--quick", "--resolution", "100"], "--resolution 100: must be a positive multiple of 64"),
    (["--quick", "--steps", "3"], "--steps 3: too few for a guided step (M=1) with 2 look-ahead steps after the "
                                   "first img2img step; use --steps 4 or more."),
    (["--quick", "--batch_sizes", "0"], "--batch_sizes, --repeats and --threads must be positive"),
])
def test_bad_flags_are_named_in_the_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err
