"""Tests of distdiff/tiny_sd/model.py: the offline SD-architecture model and its folder format."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTokenizer

from distdiff.pipelines.distdiff_img2img import DistDiffImg2ImgPipeline
from distdiff.pipelines.sampling import default_resolution
from distdiff.tiny_sd.model import (FASHION_WORDS, MODEL_MAX_LENGTH, PRESETS, SCHEDULER_CONFIG, VOCAB_WORDS,
                                    build_tiny_sd, build_tokenizer, load_tiny_sd, save_tiny_sd, vae_round_trip_error)

REPO = Path(__file__).resolve().parents[1]
DIGIT_PROMPTS = [f"a photo of the digit {d}." for d in range(10)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny SD saved once with seed 3, and the in-memory components it was saved from."""
    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    save_tiny_sd(path, seed=3)
    return path, build_tiny_sd(seed=3)


def unet_output(components, seed=0):
    """UNet noise prediction for fixed latents and a fixed prompt: [1, 4, h, w]."""
    tokenizer, unet = components["tokenizer"], components["unet"]
    ids = tokenizer(DIGIT_PROMPTS[3], padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    size = unet.config.sample_size
    latents = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        text = components["text_encoder"](ids)[0]
        return unet(latents, 500, encoder_hidden_states=text).sample


def test_folder_has_sd_v1_layout(saved):
    path, _ = saved
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["safety_checker"] == [None, None]
    for weights in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                    "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt"):
        assert (path / weights).is_file(), weights
    assert not list(path.parent.glob(".tiny-sd*")), "staging folder left behind"


def test_reload_gives_identical_weights_and_outputs(saved):
    path, original = saved
    loaded = {
        "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet"),
        "vae": AutoencoderKL.from_pretrained(path, subfolder="vae"),
        "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
    }
    for name in ("unet", "vae", "text_encoder"):
        before, after = original[name].state_dict(), loaded[name].state_dict()
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(before[key], after[key]), f"{name}.{key}"
    assert torch.equal(unet_output(original), unet_output(loaded))
    assert loaded["tokenizer"](DIGIT_PROMPTS).input_ids == original["tokenizer"](DIGIT_PROMPTS).input_ids


def test_scheduler_is_ddim_with_sd_v1_schedule(saved):
    path, _ = saved
    scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
    for key, value in SCHEDULER_CONFIG.items():
        assert scheduler.config[key] == value, key
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.steps_offset == 1
    assert torch.isclose(scheduler.betas[0], torch.tensor(0.00085))
    assert torch.isclose(scheduler.betas[-1], torch.tensor(0.012))


def test_seed_controls_weights(saved):
    _, original = saved
    assert torch.equal(unet_output(build_tiny_sd(seed=3)), unet_output(original))
    assert not torch.allclose(unet_output(build_tiny_sd(seed=4)), unet_output(original))


def test_tokenizer_digit_prompts_are_distinct_and_fit():
    tokenizer = build_tokenizer()
    ids = [tokenizer(p).input_ids for p in DIGIT_PROMPTS]
    assert len({tuple(i) for i in ids}) == 10
    # "<bos> a photo of the digit 3 . <eos>": one token per word, differing only at the digit.
    assert all(len(i) == 9 for i in ids)
    assert len({i[6] for i in ids}) == 10 and all(i[:6] == ids[0][:6] for i in ids)
    assert ids[0][0] == tokenizer.bos_token_id and ids[0][-1] == tokenizer.eos_token_id
    padded = tokenizer(DIGIT_PROMPTS, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH and all(len(i) == MODEL_MAX_LENGTH for i in padded)
    assert tokenizer.decode(ids[3], skip_special_tokens=True) == "a photo of the digit 3 ."


def test_tokenizer_covers_any_text():
    tokenizer = build_tokenizer()
    for word in VOCAB_WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    text = "zebra crossing, café ☃ 42!"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")


def test_default_resolution_and_vae_shapes():
    components = build_tiny_sd()
    unet, vae = components["unet"], components["vae"]
    assert default_resolution(unet, vae) == 32
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample()
        decoded = vae.decode(latents).sample
    assert latents.shape == (2, 4, 16, 16) and latents.shape[-1] == unet.config.sample_size
    assert decoded.shape == images.shape


def test_diffusers_pipelines_load_the_folder(saved):
    path, _ = saved
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    assert isinstance(img2img.scheduler, DDIMScheduler) and img2img.vae_scale_factor == 2
    image = torch.rand(2, 3, 32, 32)
    out = img2img(DIGIT_PROMPTS[:2], image=image, strength=0.5, num_inference_steps=4, guidance_scale=7.5,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 32, 32, 3) and 0.0 <= out.min() and out.max() <= 1.0
    txt2img = StableDiffusionPipeline(**img2img.components)
    out = txt2img(DIGIT_PROMPTS[:1], num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 32, 32, 3)  # default size = unet.sample_size * vae scale factor


def test_load_tiny_sd_and_missing_folder(saved, tmp_path):
    path, original = saved
    assert torch.equal(unet_output(load_tiny_sd(path)), unet_output(original))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_tiny_sd(tmp_path)
    with pytest.raises(ValueError, match="unknown tiny SD preset 'huge'"):
        build_tiny_sd(preset="huge")


def test_make_tiny_sd_script_replaces_folder(tmp_path):
    out = tmp_path / "model"
    for seed in (0, 1):
        subprocess.run([sys.executable, str(REPO / "scripts/make_tiny_sd.py"), "--output_dir", str(out),
                        "--seed", str(seed)], check=True, capture_output=True)
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    expected = build_tiny_sd(seed=1)["unet"].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in unet.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_fashion_preset_is_the_digits_network_with_clothing_words():
    digits, fashion = build_tiny_sd(seed=0, preset="digits"), build_tiny_sd(seed=0, preset="fashion")
    assert {k: v for k, v in PRESETS["fashion"].items() if k != "tokenizer"} == \
        {k: v for k, v in PRESETS["digits"].items() if k != "tokenizer"}
    assert fashion["unet"].config == digits["unet"].config
    tokens = fashion["tokenizer"].tokenize("a photo of a T-shirt or top.")
    assert tokens == [f"{w}</w>" for w in ("a", "photo", "of", "a", "t", "-", "shirt", "or", "top", ".")]
    for word in FASHION_WORDS:  # "trouser" needs the merges after "seven"'s "s"+"e": whole words still
        assert fashion["tokenizer"].tokenize(word) == [f"{word}</w>"], word
    assert len(digits["tokenizer"].tokenize("pullover")) > 1  # the digits vocabulary is unchanged
    shipped = json.loads((REPO / "checkpoint" / "tiny-sd-digits" / "tokenizer" / "vocab.json").read_text())
    assert digits["tokenizer"].get_vocab() == shipped


def test_vae_round_trip_error_in_pixel_units_and_batch_independent():
    vae = build_tiny_sd(seed=0)["vae"]
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    whole, batched = vae_round_trip_error(vae, images), vae_round_trip_error(vae, images, batch_size=2)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    assert whole["mae"] == pytest.approx(((decoded - images).abs() / 2).mean().item(), rel=1e-5)
    assert whole["rmse"] == pytest.approx((((decoded - images) / 2) ** 2).mean().sqrt().item(), rel=1e-5)
    assert batched["mae"] == pytest.approx(whole["mae"], rel=1e-5) and whole["num_images"] == 5
    assert 0 < whole["mae"] <= whole["rmse"] <= 1


# ---------------------------------------------------------------------------------------------
# The shipped, trained model: checkpoint/tiny-sd-digits/ (scripts/train_tiny_sd.py).

SHIPPED = REPO / "checkpoint" / "tiny-sd-digits"
# Measured on these batches (2 images per class, CFG 7.5) with generator seeds 0-3 at DDIM 10 and
# 5 steps: txt2img and img2img both scored 1.00 every time (scripts/eval_tiny_sd.py at 50 steps:
# 1.00 on 200 txt2img and 100 img2img images). 0.85 allows 3 misses for numeric differences
# across platforms; a random-weight model scores about 0.1.
TXT2IMG_MIN_FIDELITY = 0.85
IMG2IMG_MIN_FIDELITY = 0.85


def test_generator_pool_is_disjoint_from_train_val_test():
    from distdiff.data.datasets import digits_split_indices
    from distdiff.data.registry import load_dataset

    pool = set(digits_split_indices("pool").tolist())
    others = [set(digits_split_indices(split).tolist()) for split in ("train", "val", "test")]
    assert len(pool) > 900 and all(not pool & other for other in others)
    assert len(pool.union(*others)) == 1797  # every digit is in exactly one split
    pool_stems = {s.stem for s in load_dataset("digits", "pool").samples}
    for split in ("train", "val", "test"):
        assert not pool_stems & {s.stem for s in load_dataset("digits", split).samples}, split


def test_train_script_trains_on_the_pool_only(monkeypatch, tmp_path):
    import importlib.util

    from distdiff.data.registry import load_dataset

    spec = importlib.util.spec_from_file_location("train_tiny_sd_script", REPO / "scripts" / "train_tiny_sd.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = {}
    summary = {"vae_loss": 0.0, "unet_loss": 0.0, "scaling_factor": 1.0}
    monkeypatch.setattr(script, "train_tiny_sd", lambda dataset, output_dir, **kw: seen.update(
        dataset=dataset, kw=kw) or {**summary, "num_images": len(dataset)})
    monkeypatch.setattr(script.torch, "set_num_threads", lambda n: seen.update(threads=n))
    script.main(script.parse_args(["--output_dir", str(tmp_path / "m"), "--state_dir", str(tmp_path / "s"),
                                   "--unet_steps", "7", "--num_threads", "1"]))
    stems = [s.stem for s in seen["dataset"].samples]
    assert stems == [s.stem for s in load_dataset("digits", "pool").samples]
    assert seen["kw"]["unet_steps"] == 7 and seen["kw"]["prompt_dropout"] == 0.1 and seen["threads"] == 1
    with pytest.raises(SystemExit, match="--prompt_dropout must be in"):
        script.main(script.parse_args(["--prompt_dropout", "1.5"]))
    # the digits defaults are the digits recipe, written where expand.py -d digits looks
    args = script.parse_args([])
    assert args.output_dir == str(SHIPPED) and args.state_dir == "runs/train_tiny_sd" and args.unet_steps == 1200


def test_train_script_takes_the_dataset_and_its_recipe(monkeypatch):
    import importlib.util

    from distdiff.data.registry import dataset_spec

    spec = importlib.util.spec_from_file_location("train_tiny_sd_script", REPO / "scripts" / "train_tiny_sd.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = {}
    summary = {"vae_loss": 0.0, "unet_loss": 0.0, "scaling_factor": 1.0, "num_images": 0}
    monkeypatch.setattr(script, "load_dataset", lambda name, split: seen.update(name=name, split=split) or [])
    monkeypatch.setattr(script, "train_tiny_sd", lambda dataset, output_dir, **kw: seen.update(
        output_dir=output_dir, kw=kw) or summary)
    monkeypatch.setattr(script.torch, "set_num_threads", lambda n: None)
    script.main(script.parse_args(["--dataset", "fashion-mnist", "--vae_steps", "5"]))
    assert (seen["name"], seen["split"]) == ("fashion-mnist", "pool")
    assert seen["output_dir"] == dataset_spec("fashion-mnist").sd_model  # where expand.py -d fashion-mnist looks
    kw = seen["kw"]
    assert kw["preset"] == "fashion" and kw["state_dir"] == "runs/train_tiny_sd_fashion"
    assert kw["vae_steps"] == 5 and kw["unet_steps"] == 2400 and kw["max_shift"] == 0  # the flag wins, else the recipe
    assert kw["prompt_dropout"] == 0.1  # not in the recipe: the digits default


def test_shipped_checkpoint_loads_like_sd(tmp_path):
    from distdiff.data.registry import load_dataset
    from distdiff.tiny_sd.train import images_tensor

    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 20 * 2 ** 20
    components = load_tiny_sd(SHIPPED)
    unet, vae = components["unet"], components["vae"]
    assert default_resolution(unet, vae) == 32 and unet.config.sample_size == 8
    assert isinstance(components["scheduler"], DDIMScheduler)
    images, _ = images_tensor(load_dataset("digits", "train"))
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(0)) * vae.config.scaling_factor
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    assert latents.shape == (100, 4, 8, 8) and decoded.shape == images.shape
    assert 0.7 < latents.std().item() < 1.3  # scaling factor makes latents about unit variance, as in SD
    assert (decoded - images).abs().mean() < 0.1  # the VAE reconstructs digits it never saw


def test_shipped_checkpoint_txt2img_images_show_the_prompted_digit(judge):
    from distdiff.report.pixel_judge import generate

    pipe = DistDiffImg2ImgPipeline.from_pretrained(str(SHIPPED), precision="fp32")
    labels = [d for d in range(10) for _ in range(2)]
    images = generate(pipe, DIGIT_PROMPTS, labels, num_inference_steps=10, guidance_scale=7.5, seed=0)
    assert images.shape == (20, 32, 32, 3)
    assert judge.accuracy(images, labels) >= TXT2IMG_MIN_FIDELITY
    assert judge.accuracy(images, [(d + 1) % 10 for d in labels]) < 0.2  # not one digit for every prompt


def test_shipped_checkpoint_img2img_keeps_the_class(judge):
    from distdiff.data.registry import load_dataset
    from distdiff.report.pixel_judge import generate

    pipe = DistDiffImg2ImgPipeline.from_pretrained(str(SHIPPED), precision="fp32")
    train = load_dataset("digits", "train")
    index = [i for d in range(10) for i in [j for j, y in enumerate(train.labels) if y == d][:2]]
    sources = [train.load_image(i) for i in index]
    labels = [train.labels[i] for i in index]
    images = generate(pipe, [train.prompt(y) for y in range(10)], labels, images=sources, strength=0.5,
                      num_inference_steps=10, guidance_scale=7.5, seed=0)
    source_pixels = np.stack([np.asarray(s) for s in sources]).astype(np.float32) / 255
    assert images.shape == (20, 32, 32, 3) and not np.allclose(images, source_pixels, atol=0.05)
    assert judge.accuracy(images, labels) >= IMG2IMG_MIN_FIDELITY


# The shipped Fashion-MNIST model: checkpoint/tiny-sd-fashion/ (train_tiny_sd.py --dataset fashion-mnist).
SHIPPED_FASHION = REPO / "checkpoint" / "tiny-sd-fashion"
# scripts/eval_tiny_sd.py measured MAE 0.0222 on the 100 val images (docs/fashion_mnist.md); the
# margin covers numeric differences across platforms, not a worse model.
FASHION_VAE_MAX_MAE = 0.03


def test_shipped_fashion_checkpoint_is_the_default_and_reconstructs_val():
    from distdiff.data.datasets import DatasetError
    from distdiff.data.registry import dataset_spec, load_dataset
    from distdiff.tiny_sd.train import images_tensor

    assert Path(dataset_spec("fashion-mnist").sd_model) == SHIPPED_FASHION  # expand.py -d fashion-mnist finds it
    assert sum(p.stat().st_size for p in SHIPPED_FASHION.rglob("*") if p.is_file()) <= 20 * 2 ** 20
    components = load_tiny_sd(SHIPPED_FASHION)
    assert components["tokenizer"].tokenize("a photo of a pullover.")[-2:] == ["pullover</w>", ".</w>"]
    assert default_resolution(components["unet"], components["vae"]) == 32
    try:
        val = load_dataset("fashion-mnist", "val")
    except DatasetError as err:
        pytest.skip(f"Fashion-MNIST files not installed: {err}")
    error = vae_round_trip_error(components["vae"], images_tensor(val)[0])
    assert error["num_images"] == 100 and error["mae"] < FASHION_VAE_MAX_MAE
