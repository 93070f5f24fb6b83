"""Textual inversion (distdiff/method/textual_inversion.py) on the shipped tiny SD models, a few steps at 32 px."""

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from distdiff.method.textual_inversion import (IMAGENET_TEMPLATES_SMALL, TextualInversionConfig, TextualInversionError,
                                               _batches, add_placeholder_tokens, apply_embeddings, learn_embeddings,
                                               load_embeddings, load_inversion_models, save_embeddings,
                                               train_placeholder)

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoint"
# A handful of steps at the tiny models' own resolution (None: 8 latent px x 4 = 32).
FAST = TextualInversionConfig(resolution=None, max_train_steps=3, train_batch_size=2, seed=5)


@pytest.fixture(scope="module")
def digits_models():
    return load_inversion_models(CHECKPOINTS / "tiny-sd-digits")


def _images(n, seed=0, size=20):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)) for _ in range(n)]


def _fresh(models):
    return copy.deepcopy(models.tokenizer), copy.deepcopy(models.text_encoder)


def _prompt_states(tokenizer, text_encoder, text):
    ids = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def test_defaults_are_da_fusions():
    config = TextualInversionConfig()
    assert (config.learning_rate, config.scale_lr, config.train_batch_size, config.max_train_steps,
            config.resolution, config.initializer, config.repeats) == (5e-4, True, 4, 1000, 512, "the", 100)
    assert config.effective_lr == pytest.approx(2e-3)  # --scale_lr with batch 4 on one process
    assert len(IMAGENET_TEMPLATES_SMALL) == 27 and IMAGENET_TEMPLATES_SMALL[0] == "a photo of a {}"
    with pytest.raises(TextualInversionError, match="max_train_steps must be positive"):
        TextualInversionConfig(max_train_steps=0)
    with pytest.raises(TextualInversionError, match="needs a"):
        TextualInversionConfig(templates=("a photo",))


def test_the_placeholder_starts_as_the_initializer_word(digits_models):
    tokenizer, text_encoder = _fresh(digits_models)
    rows = text_encoder.get_input_embeddings().weight.shape[0]
    [token_id] = add_placeholder_tokens(tokenizer, text_encoder, ["<0>"], initializer="the")
    weight = text_encoder.get_input_embeddings().weight
    assert token_id == rows and weight.shape[0] == rows + 1  # one new row
    [the] = tokenizer.encode("the", add_special_tokens=False)
    assert torch.equal(weight[token_id], weight[the])
    assert token_id in tokenizer("a photo of a <0>").input_ids


def test_an_initializer_of_several_tokens_falls_back_to_their_mean(digits_models, caplog):
    tokenizer, text_encoder = _fresh(digits_models)
    pieces = tokenizer.encode("t-shirt", add_special_tokens=False)
    assert len(pieces) > 1  # the tiny vocabulary has no single token for it
    with caplog.at_level(logging.WARNING):
        [token_id] = add_placeholder_tokens(tokenizer, text_encoder, ["<top>"], initializer="t-shirt")
    weight = text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(weight[token_id], weight[pieces].mean(dim=0), rtol=0, atol=0)
    assert "is not one token of this tokenizer" in caplog.text
    with pytest.raises(TextualInversionError, match="has no token in this tokenizer"):
        add_placeholder_tokens(tokenizer, text_encoder, ["<x>"], initializer="")


def test_training_changes_only_the_new_tokens_row(digits_models):
    tokenizer, text_encoder = _fresh(digits_models)
    before = text_encoder.get_input_embeddings().weight.detach().clone()
    [token_id] = add_placeholder_tokens(tokenizer, text_encoder, ["<3>"], initializer="the")
    start = text_encoder.get_input_embeddings().weight[token_id].detach().clone()
    losses = train_placeholder(digits_models, tokenizer, text_encoder, _images(3), "<3>", config=FAST,
                               generator=torch.Generator().manual_seed(0))
    after = text_encoder.get_input_embeddings().weight.detach()
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not torch.equal(after[token_id], start)  # the token learned something
    # Every original row bit-identical: AdamW's weight decay alone would have moved all of them.
    assert torch.equal(after[:token_id], before)
    assert not any(p.requires_grad for p in text_encoder.parameters())  # nothing left trainable
    assert all(not p.requires_grad for p in digits_models.unet.parameters())


def test_v_prediction_models_train_on_the_velocity(digits_models):
    scheduler = DDPMScheduler.from_config({**digits_models.noise_scheduler.config, "prediction_type": "v_prediction"})
    models = dataclasses.replace(digits_models, noise_scheduler=scheduler)
    tokenizer, text_encoder = _fresh(models)
    add_placeholder_tokens(tokenizer, text_encoder, ["<v>"], initializer="the")
    config = dataclasses.replace(FAST, max_train_steps=1)
    [v_loss] = train_placeholder(models, tokenizer, text_encoder, _images(2), "<v>", config=config,
                                 generator=torch.Generator().manual_seed(0))
    tokenizer, text_encoder = _fresh(digits_models)
    add_placeholder_tokens(tokenizer, text_encoder, ["<v>"], initializer="the")
    [eps_loss] = train_placeholder(digits_models, tokenizer, text_encoder, _images(2), "<v>", config=config,
                                   generator=torch.Generator().manual_seed(0))
    assert np.isfinite(v_loss) and v_loss != eps_loss  # same draws, another target


def test_an_epoch_is_every_image_repeats_times_in_batches():
    config = TextualInversionConfig(repeats=2, train_batch_size=4, max_train_steps=5)
    batches = list(_batches(3, config, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 2, 4, 2, 4]  # 3 x 2 = 6 per epoch: a short last batch
    for epoch in (batches[0:2], batches[2:4]):
        assert sorted(torch.cat(epoch).tolist()) == [0, 0, 1, 1, 2, 2]


def test_a_tokenizer_that_has_the_token_is_refused(digits_models):
    tokenizer, text_encoder = _fresh(digits_models)
    apply_embeddings(tokenizer, text_encoder, {"<0>": torch.zeros(64)})
    with pytest.raises(TextualInversionError, match="already contains the token <0>"):
        apply_embeddings(tokenizer, text_encoder, {"<0>": torch.zeros(64)})
    with pytest.raises(TextualInversionError, match="already contains the token <0>"):
        add_placeholder_tokens(tokenizer, text_encoder, ["<0>"], initializer="the")
    with pytest.raises(TextualInversionError, match="do not fit this text encoder's width 64"):
        apply_embeddings(*_fresh(digits_models), {"<1>": torch.zeros(768)})


def test_learned_embeddings_save_load_and_apply_exactly(digits_models, tmp_path):
    images = {"0": _images(3, seed=1), "seven": _images(2, seed=2)}
    learned = learn_embeddings(digits_models, images, config=FAST)
    assert list(learned) == ["<0>", "<seven>"] and all(e.shape == (64,) for e in learned.values())
    assert not torch.equal(learned["<0>"], learned["<seven>"])  # each class learns from its own images
    assert all(torch.equal(a, b) for a, b in zip(learned.values(), learn_embeddings(
        digits_models, images, config=FAST).values()))  # same seed, same embeddings
    # learn_embeddings trains copies: the models' own tokenizer and text encoder are unchanged
    assert len(digits_models.tokenizer) == 599 and digits_models.text_encoder.get_input_embeddings().num_embeddings == 599

    path = tmp_path / "tokens" / "digits-1-10.pt"
    save_embeddings(learned, path)
    loaded = load_embeddings(path)
    assert list(loaded) == list(learned) and all(torch.equal(loaded[k], learned[k]) for k in learned)
    tokenizer, text_encoder = _fresh(digits_models)
    ids = apply_embeddings(tokenizer, text_encoder, loaded)
    weight = text_encoder.get_input_embeddings().weight
    assert all(torch.equal(weight[i], learned[t]) for i, t in zip(ids, learned))
    # The prompt with the token encodes as a text encoder holding the learned row does.
    reference_tokenizer, reference = _fresh(digits_models)
    [token_id] = add_placeholder_tokens(reference_tokenizer, reference, ["<seven>"], initializer="the")
    with torch.no_grad():
        reference.get_input_embeddings().weight[token_id] = learned["<seven>"]
    assert torch.equal(_prompt_states(tokenizer, text_encoder, "a photo of a <seven>"),
                       _prompt_states(reference_tokenizer, reference, "a photo of a <seven>"))

    with pytest.raises(TextualInversionError, match=r"share the tokens \['<golden_retriever>'\]"):
        learn_embeddings(digits_models, {"golden retriever": [], "golden_retriever": []}, config=FAST)
    with pytest.raises(TextualInversionError, match="no images to learn it from"):
        learn_embeddings(digits_models, {"5": []}, config=FAST)
    torch.save({"<0>": [1.0]}, tmp_path / "bad.pt")
    with pytest.raises(TextualInversionError, match="does not hold"):
        load_embeddings(tmp_path / "bad.pt")


def test_fashion_class_names_become_one_token_each():
    models = load_inversion_models(CHECKPOINTS / "tiny-sd-fashion")
    config = dataclasses.replace(FAST, max_train_steps=1)
    learned = learn_embeddings(models, {"T-shirt/top": _images(2), "Ankle boot": _images(2, seed=3)}, config=config)
    assert list(learned) == ["<T-shirt/top>", "<Ankle_boot>"]
    tokenizer, text_encoder = _fresh(models)
    ids = apply_embeddings(tokenizer, text_encoder, learned)
    assert tokenizer("a photo of a <Ankle_boot>").input_ids[5] == ids[1]
