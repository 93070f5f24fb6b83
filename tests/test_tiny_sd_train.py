"""Tests of distdiff/tiny_sd/train.py: the two-stage training of a dataset's tiny SD."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTokenizer

from distdiff.data.registry import load_dataset
from distdiff.tiny_sd.model import build_tiny_sd
from distdiff.tiny_sd.train import (RECIPES, TRAIN_DEFAULTS, encode_latents, images_tensor, prompt_table, random_shift,
                                    recipe_hyperparameters, train_command, train_stage, train_tiny_sd, unet_loss)


def test_random_shift_moves_content_and_fills_background():
    images = torch.full((8, 3, 9, 9), -1.0)
    images[:, :, 4, 4] = 1.0  # one bright pixel in the centre
    shifted = random_shift(images, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    positions = [tuple((s[0] == 1.0).nonzero()[0].tolist()) for s in shifted]
    assert all(abs(y - 4) <= 2 and abs(x - 4) <= 2 for y, x in positions)
    assert len(set(positions)) > 1
    assert ((shifted == 1.0).sum(dim=(1, 2, 3)) == 3).all() and ((shifted == -1.0) | (shifted == 1.0)).all()
    assert torch.equal(random_shift(images, max_shift=0, generator=torch.Generator()), images)


def test_prompt_table_rows_are_templates_by_class_then_empty():
    tokenizer = build_tiny_sd()["tokenizer"]
    ids = prompt_table(tokenizer, ["0", "1", "2"], ("a photo of the digit {}.", "a photo of a {}."))
    assert ids.shape == (7, tokenizer.model_max_length)
    assert torch.equal(ids[1], tokenizer("a photo of the digit 1.", padding="max_length",
                                         max_length=tokenizer.model_max_length, return_tensors="pt").input_ids[0])
    assert torch.equal(ids[5], tokenizer("a photo of a 2.", padding="max_length",
                                         max_length=tokenizer.model_max_length, return_tensors="pt").input_ids[0])
    assert ids[6, 0] == tokenizer.bos_token_id and (ids[6, 1:] == tokenizer.eos_token_id).all()


def test_unet_loss_uses_every_prompt_and_dropout(monkeypatch):
    components = build_tiny_sd(seed=0)
    unet, text_encoder, scheduler = components["unet"], components["text_encoder"], components["scheduler"]
    prompt_ids = prompt_table(components["tokenizer"], [str(d) for d in range(10)], ("a photo of the digit {}.",))
    seen = []
    forward = text_encoder.forward
    monkeypatch.setattr(text_encoder, "forward", lambda ids, *a, **k: (seen.append(ids), forward(ids, *a, **k))[1])
    means, stds = torch.randn(40, 4, 16, 16), torch.full((40, 4, 16, 16), 0.1)
    labels = torch.arange(40) % 10
    kwargs = dict(num_classes=10, scaling_factor=1.0, batch_size=32, snr_gamma=5.0)
    loss = unet_loss(unet, text_encoder, scheduler, means, stds, labels, prompt_ids, prompt_dropout=0.5,
                     generator=torch.Generator().manual_seed(0), **kwargs)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    rows = {tuple(r.tolist()) for r in seen[0]}
    assert tuple(prompt_ids[-1].tolist()) in rows  # dropout fed the empty prompt
    assert len(seen[0]) == len(rows)  # each distinct prompt is encoded once per batch
    seen.clear()
    unet_loss(unet, text_encoder, scheduler, means, stds, labels, prompt_ids, prompt_dropout=0.0,
              generator=torch.Generator().manual_seed(0), **kwargs)
    assert tuple(prompt_ids[-1].tolist()) not in {tuple(r.tolist()) for r in seen[0]}


class Interrupt(Exception):
    """Stands in for a killed job."""


def test_train_stage_resumes_exactly(tmp_path):
    def run(state_path, interrupt_at=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        calls = []

        def loss_fn(generator):
            if len(calls) == interrupt_at:
                raise Interrupt
            calls.append(1)
            return (model(torch.randn(8, 3, generator=generator)) - 1.0).pow(2).mean()

        train_stage({"m": model}, loss_fn, steps=6, lr=0.1, warmup_steps=1, seed=5, state_path=state_path,
                    save_every=2, hyperparameters={"steps": 6}, ema_max_decay=0.9)
        return model, len(calls)

    straight, _ = run(tmp_path / "a.pt")
    with pytest.raises(Interrupt):
        run(tmp_path / "b.pt", interrupt_at=5)  # killed during step 5: the state holds step 4
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 4
    resumed, calls = run(tmp_path / "b.pt")
    assert calls == 2
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    with pytest.raises(ValueError, match="other settings"):
        train_stage({"m": torch.nn.Linear(3, 1)}, lambda g: torch.zeros(()), steps=6, lr=0.1, warmup_steps=1,
                    seed=5, state_path=tmp_path / "b.pt", save_every=2, hyperparameters={"steps": 7})


def test_train_tiny_sd_end_to_end(tmp_path):
    pool = load_dataset("digits", "pool").subset(range(0, 997, 50))
    summary = train_tiny_sd(pool, tmp_path / "model", seed=0, state_dir=tmp_path / "state", vae_steps=2,
                            vae_batch_size=4, unet_steps=2, unet_batch_size=4, latent_copies=2, warmup_steps=1)
    vae = AutoencoderKL.from_pretrained(tmp_path / "model", subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "model", subfolder="unet")
    assert vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    assert summary["scaling_factor"] != 0.18215 and summary["num_images"] == 20
    assert summary["templates"][0] == pool.prompt_template
    with torch.no_grad():
        latents = vae.encode(images_tensor(pool)[0][:2]).latent_dist.mean
    assert latents.shape == (2, 4, unet.config.sample_size, unet.config.sample_size)
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert {p.name for p in (tmp_path / "state").iterdir()} == {"vae.pt", "unet.pt"}


def test_encode_latents_rows_follow_copies():
    vae = build_tiny_sd()["vae"]
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    means, stds, sources = encode_latents(vae, images, copies=2, max_shift=1, seed=0)
    assert means.shape == stds.shape == (6, 4, 16, 16)
    assert sources.tolist() == [0, 1, 2, 0, 1, 2]
    with torch.no_grad():
        assert torch.allclose(means[:3], vae.encode(images).latent_dist.mean, atol=1e-5)


def test_a_state_of_another_preset_is_not_resumed(tmp_path):
    pool = load_dataset("digits", "pool").subset(range(0, 997, 100))
    tiny = dict(vae_steps=1, vae_batch_size=2, unet_steps=1, unet_batch_size=2, latent_copies=1, warmup_steps=1)
    train_tiny_sd(pool, tmp_path / "model", seed=0, state_dir=tmp_path / "state", preset="fashion", **tiny)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "model", subfolder="tokenizer")
    assert tokenizer.tokenize("a pullover.") == ["a</w>", "pullover</w>", ".</w>"]  # the fashion vocabulary
    with pytest.raises(ValueError, match="other settings"):
        train_tiny_sd(pool, tmp_path / "model", seed=0, state_dir=tmp_path / "state", preset="digits", **tiny)


def test_recipes_differ_from_the_digits_defaults_only_where_they_say():
    assert recipe_hyperparameters("digits") == TRAIN_DEFAULTS
    fashion = recipe_hyperparameters("fashion-mnist")
    changed = {k for k in TRAIN_DEFAULTS if fashion[k] != TRAIN_DEFAULTS[k]}
    assert changed == set(RECIPES["fashion-mnist"].overrides) and fashion["max_shift"] == 0
    assert RECIPES["fashion-mnist"].preset == "fashion"
    assert RECIPES["fashion-mnist"].state_dir != RECIPES["digits"].state_dir


def test_train_command_names_the_recipe_that_writes_a_default_model():
    from distdiff.data.registry import DATASETS, dataset_spec

    assert train_command(dataset_spec("fashion-mnist").sd_model) == \
        "python scripts/train_tiny_sd.py --dataset fashion-mnist"
    shifted = next(name for name, spec in DATASETS.items() if name != "digits" and spec.sd_model ==
                   dataset_spec("digits").sd_model)  # a shifted-digits dataset shares the digits model
    assert train_command(dataset_spec(shifted).sd_model) == "python scripts/train_tiny_sd.py --dataset digits"
    assert train_command("/elsewhere/sd") == "python scripts/train_tiny_sd.py --output_dir /elsewhere/sd"
