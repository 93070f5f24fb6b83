"""Tests for distdiff.pipelines.sampling and the pipeline's loop (distdiff.pipelines.distdiff_img2img): loading, the img2img loop against
diffusers, seeds and batching."""

import logging

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

import expand
from distdiff.method.direct import DirectGuidance
from distdiff.method.guidance import GuideEnergy
from distdiff.method.methods import GUIDANCE_METHODS
from distdiff.method.transform import TransformGuidance
from distdiff.data.registry import load_dataset
from distdiff.method.records import ENERGY_KEYS, STEP_KEYS, Record
from distdiff.pipelines.sampling import (encode_latent_dist, encode_prompts, image_seed, image_to_tensor,
                                         img2img_start_index, make_generators, resolve_dtype)
from distdiff.pipelines.distdiff_img2img import load_stable_diffusion

PROMPTS = [f"a photo of the digit {d}." for d in range(10)]


@pytest.fixture(scope="module")
def digits():
    """Four digits images [4,3,32,32] in [0,1] and their labels."""
    dataset = load_dataset("digits", "train")
    picks = [0, 1, 2, 3]
    images = torch.stack([torch.from_numpy(np.array(dataset.load_image(i))).permute(2, 0, 1) for i in picks])
    return images.float() / 255.0, torch.tensor([dataset.samples[i].label for i in picks])


@pytest.fixture(scope="module")
def prompts(tiny_sd):
    return encode_prompts(tiny_sd, PROMPTS)


@pytest.fixture(scope="module")
def guide(tiny_guide, tiny_prototypes):
    return GuideEnergy(tiny_guide, tiny_prototypes, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_start_index_follows_diffusers_get_timesteps():
    assert img2img_start_index(50, 0.5) == 25
    assert img2img_start_index(50, 1.0) == 0
    assert img2img_start_index(50, 0.3) == 35
    assert img2img_start_index(10, 0.25) == 8  # int(2.5) = 2 denoising steps
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            img2img_start_index(50, bad)
    with pytest.raises(ValueError, match="unknown start index formula 'paper'"):
        img2img_start_index(50, 0.5, "paper")


def test_authors_start_index_is_one_step_earlier_at_strength_0_9_and_equal_at_0_5():
    # (1 - 0.9) * 50 = 4.999... in floating point, so the authors' int() starts at 4, diffusers' at 5.
    assert img2img_start_index(50, 0.9, "diffusers") == 5
    assert img2img_start_index(50, 0.9, "authors") == 4
    for strength, index in ((0.5, 25), (0.2, 40), (1.0, 0)):
        assert img2img_start_index(50, strength, "authors") == img2img_start_index(50, strength) == index


def test_authors_start_index_denoises_one_more_step(tiny_sd, digits, prompts, generate):
    """Of 10 steps at strength 0.9 the authors start at index 0 (as diffusers at 1.0), diffusers at 1."""
    params = encode_latent_dist(tiny_sd, digits[0][:1] * 2 - 1)
    common = {"prompts": prompts, "steps": 10}
    run = {(s, f): generate(tiny_sd, params, digits[1][:1], [3], strength=s, start_index=f, **common).images
           for s, f in ((0.9, "authors"), (0.9, "diffusers"), (1.0, "diffusers"), (0.5, "authors"),
                        (0.5, "diffusers"))}
    assert torch.equal(run[0.9, "authors"], run[1.0, "diffusers"])
    assert not torch.allclose(run[0.9, "authors"], run[0.9, "diffusers"], atol=1e-3)
    assert torch.equal(run[0.5, "authors"], run[0.5, "diffusers"])


def test_loading_from_a_folder_gives_the_default_resolution(tiny_sd, tmp_path):
    assert tiny_sd.default_resolution == 32  # unet sample_size 16 x VAE factor 2
    assert tiny_sd.dtype == torch.float32
    with pytest.raises(OSError, match="--model"):
        load_stable_diffusion(str(tmp_path / "no-such-model"))


def test_local_files_only_loads_a_folder_and_refuses_an_uncached_hub_id_offline(tiny_sd_dir, no_network, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # an empty cache whatever this machine has
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert load_stable_diffusion(str(tiny_sd_dir), local_files_only=True).default_resolution == 32
    with pytest.raises(OSError, match=r"distdiff-tests/no-such-model.*local Hugging Face cache \(--local_files_only\)"):
        load_stable_diffusion("distdiff-tests/no-such-model", local_files_only=True)


def test_expand_passes_local_files_only_to_the_loader(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    argv = ["-d", "digits", "--model", "distdiff-tests/no-such-model", "--local_files_only", "--guidance", "none",
            "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit, match=r"expand.py: error: --model 'distdiff-tests/no-such-model'.*--local_files_only"):
        expand.main(expand.parse_args(argv))


def test_half_precision_is_replaced_by_fp32_on_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="distdiff.pipelines.sampling"):
        assert resolve_dtype("fp16", "cpu") == torch.float32
    assert "fp32 instead of fp16" in caplog.text
    assert resolve_dtype("bf16", "cuda") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_dtype("fp8", "cpu")


def test_source_crop_keeps_the_centre_or_squashes():
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, 15:] = 255  # white only in the right quarter
    image = Image.fromarray(pixels)
    center = image_to_tensor(image, resolution=10, crop="center")
    assert center.shape == (3, 10, 10)
    assert torch.allclose(center, torch.full_like(center, -1.0))  # columns 5..14 are all black
    squashed = image_to_tensor(image, resolution=10, crop="resize")
    assert squashed[:, :, -1].min() > 0.9 and squashed[:, :, 0].max() < -0.9


def test_image_seeds_are_stable_and_distinct():
    seed = image_seed(42, "cat", "img_001", 3)
    assert seed == image_seed(42, "cat", "img_001", 3)
    assert 0 <= seed < 2 ** 63
    others = {image_seed(42, "cat", "img_001", 4), image_seed(43, "cat", "img_001", 3),
              image_seed(42, "dog", "img_001", 3), image_seed(42, "cat", "img_002", 3)}
    assert seed not in others and len(others) == 4


def test_unguided_loop_reproduces_diffusers_img2img_pipeline(tiny_sd, digits, prompts, generate):
    """Same components, inputs and per-image generators: equal up to float rounding (batched vs
    per-image VAE encoding), so the tolerance is 1e-4 on [0,1] pixels."""
    images, labels = digits[0][:2], digits[1][:2]
    pipe = StableDiffusionImg2ImgPipeline(vae=tiny_sd.vae, text_encoder=tiny_sd.text_encoder,
                                          tokenizer=tiny_sd.tokenizer, unet=tiny_sd.unet, scheduler=tiny_sd.scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt=[PROMPTS[int(c)] for c in labels], image=images, strength=0.5, num_inference_steps=10,
                    guidance_scale=7.5, generator=make_generators([5, 6]), output_type="pt").images
    params = encode_latent_dist(tiny_sd, images * 2 - 1)
    ours = generate(tiny_sd, params, labels, [5, 6], prompts=prompts, strength=0.5, steps=10,
                          guidance_scale=7.5).images
    assert ours.shape == expected.shape == (2, 3, 32, 32)
    assert (ours - expected).abs().max().item() < 1e-4
    other_seeds = generate(tiny_sd, params, labels, [7, 8], prompts=prompts, strength=0.5, steps=10,
                                 guidance_scale=7.5).images
    assert (other_seeds - expected).abs().max().item() > 1e-2


def test_batch_size_does_not_change_guided_images(tiny_sd, digits, prompts, guide, generate):
    images, labels = digits
    params = encode_latent_dist(tiny_sd, images * 2 - 1)
    seeds = [10, 11, 12, 13]
    kwargs = {"prompts": prompts, "strength": 0.5, "steps": 6, "guide": guide,
              "guidance": TransformGuidance(guidance_step=3, period=2)}
    together = generate(tiny_sd, params, labels, seeds, **kwargs)
    for i in range(4):
        alone = generate(tiny_sd, params[i:i + 1], labels[i:i + 1], seeds[i:i + 1], **kwargs)
        assert (alone.images[0] - together.images[i]).abs().max().item() < 1e-5
        for key in ENERGY_KEYS:
            assert alone.records[key][0] == pytest.approx(together.records[key][i], abs=1e-5)


def test_energies_are_recorded_before_and_after_guidance(tiny_sd, digits, prompts, guide, generate):
    images, labels = digits[0][:2], digits[1][:2]
    params = encode_latent_dist(tiny_sd, images * 2 - 1)
    common = {"prompts": prompts, "strength": 0.5, "steps": 6}
    plain = generate(tiny_sd, params, labels, [1, 2], guide=guide, **common)
    assert set(plain.records) == {Record.D_C_FINAL, Record.D_G_FINAL}
    assert generate(tiny_sd, params, labels, [1, 2], **common).records == {}
    for method in ("transform", "direct"):
        guided = generate(tiny_sd, params, labels, [1, 2], guide=guide,
                                guidance=GUIDANCE_METHODS[method](guidance_step=3, period=2, rho=10.0), **common)
        # the step's own measurements are recorded too (direct guidance has no draw or eps ball)
        assert set(guided.records) == set(ENERGY_KEYS + STEP_KEYS if method == "transform"
                                          else ENERGY_KEYS + (Record.MOVE_GRAD,))
        assert all(len(v) == 2 and all(x > 0 for x in v) for v in guided.records.values())
        assert guided.records[Record.D_C_BEFORE] != guided.records[Record.D_C_AFTER]
        # before guidance the batch is still the unguided trajectory
        assert not torch.allclose(guided.images, plain.images)


def test_direct_guidance_with_rho_zero_reproduces_unguided_images(tiny_sd, digits, prompts, guide, generate):
    images, labels = digits[0][:2], digits[1][:2]
    params = encode_latent_dist(tiny_sd, images * 2 - 1)
    common = {"prompts": prompts, "strength": 0.5, "steps": 6, "guide": guide}
    plain = generate(tiny_sd, params, labels, [1, 2], **common)
    zero = generate(tiny_sd, params, labels, [1, 2], guidance=DirectGuidance(guidance_step=3,
                                                                                   period=2, rho=0.0), **common)
    assert torch.equal(zero.images, plain.images)


def test_guided_step_must_lie_inside_the_img2img_window(tiny_sd, digits, prompts, guide, generate):
    params = encode_latent_dist(tiny_sd, digits[0][:1] * 2 - 1)
    # a library call: the message is in the method's terms (expand.py says it with its flags)
    with pytest.raises(ValueError, match="^TransformGuidance: guidance_step 6 guides schedule index 4, before the "
                                         "first img2img step 5.*lower guidance_step or raise strength"):
        generate(tiny_sd, params, digits[1][:1], [0], prompts=prompts, strength=0.5, steps=10, guide=guide,
                       guidance=TransformGuidance(guidance_step=6, period=2))
    with pytest.raises(ValueError, match="one generator per image: 1 labels, 2 generators"):
        generate(tiny_sd, params, digits[1][:1], [0, 1], prompts=prompts)
