"""Textual inversion as DA-Fusion runs it: one new token per class, learned on that class's train images.

Ported from the authors' fine_tune.py (github.com/brandontrabucco/da-fusion at ea784ad, itself diffusers'
textual-inversion example) and its launch scripts scripts/fine_tuning/fine_tune_*.sh:

- per class, a fresh tokenizer + CLIP text encoder get the placeholder `<class_name>` (dafusion.token_name),
  its embedding row initialised from the initializer word's ("the", fine_tune.py's __main__);
- each step takes a batch of that class's images (resized, randomly flipped), encodes them with the VAE,
  noises the latents at uniform random timesteps, and asks the frozen UNet to predict the noise conditioned
  on a random template of imagenet_templates_small holding the token; the loss is the MSE to the noise;
- AdamW updates the text encoder's input embeddings only, and after every step every other row is put back
  to its original value (the recipe's `index_no_updates`), so only the new token's row ever changes;
- the learned rows are saved as {token: [D] tensor} with torch.save (their learned_embeds.bin, merged over
  classes by aggregate_embeddings.py) and applied to a tokenizer + text encoder as their load_embeddings does.

Differences, all documented in docs/METHOD.md#da-fusion-a-rival-in-the-same-harness: one torch.Generator
draws every random choice (their global seeds); full precision (their fp16 and gradient checkpointing only save
GPU memory); the latents are scaled by the VAE's own scaling_factor (their constant 0.18215 is SD v1's); an
initializer word that is not one token of the tokenizer (a small tokenizer may lack it) falls back to the mean of
its pieces' embeddings, with a warning, where their script stops.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from distdiff.data.datasets import LabeledImages
from distdiff.errors import UserError
from distdiff.method.dafusion import token_name
from distdiff.utils.files import atomic_torch_save, load_torch_file

logger = logging.getLogger(__name__)

# fine_tune.py imagenet_templates_small (lines 276-304): the "object" templates (--learnable_property object,
# the default, which DA-Fusion's scripts keep).
IMAGENET_TEMPLATES_SMALL = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)


class TextualInversionError(UserError):
    """Textual inversion cannot run as asked: a token the tokenizer already has, no images, bad settings."""


@dataclass(frozen=True)
class TextualInversionConfig:
    """The settings of one class's textual inversion; defaults are DA-Fusion's, each with its source."""

    learning_rate: float = 5e-4  # scripts/fine_tuning/fine_tune_*.sh --learning_rate=5.0e-04
    scale_lr: bool = True  # the same scripts' --scale_lr: lr x batch x accumulation (1) x processes (1) = 2e-3
    train_batch_size: int = 4  # the scripts' --train_batch_size=4
    max_train_steps: int = 1000  # the scripts' --max_train_steps=1000
    resolution: int | None = 512  # the scripts' --resolution=512; None: the model's own (UNet sample_size x VAE factor)
    repeats: int = 100  # fine_tune.py --repeats default: an epoch is each image 100 times, shuffled
    flip_p: float = 0.5  # fine_tune.py TextualInversionDataset(flip_p=0.5): RandomHorizontalFlip
    center_crop: bool = False  # fine_tune.py --center_crop, not passed by the scripts: the image is resized whole
    initializer: str = "the"  # fine_tune.py __main__: args.initializer_token = "the" for every class
    adam_beta1: float = 0.9  # fine_tune.py defaults, the scripts keep them
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    templates: tuple[str, ...] = IMAGENET_TEMPLATES_SMALL  # fine_tune.py, --learnable_property object
    seed: int = 0  # fine_tune.py __main__ seeds every class's run with the trial's seed (set_seed(seed))
    # Not options: --lr_scheduler constant with --lr_warmup_steps=0 is a constant lr; --gradient_accumulation_steps=1.

    def __post_init__(self):
        for name in ("learning_rate", "train_batch_size", "max_train_steps", "repeats"):
            if not getattr(self, name) > 0:
                raise TextualInversionError(f"textual inversion: {name} must be positive, got {getattr(self, name)}.")
        if self.resolution is not None and self.resolution < 8:
            raise TextualInversionError(f"textual inversion: resolution must be at least 8, got {self.resolution}.")
        if not 0.0 <= self.flip_p <= 1.0:
            raise TextualInversionError(f"textual inversion: flip_p must be in [0, 1], got {self.flip_p}.")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise TextualInversionError("textual inversion: every template needs a '{}' for the token.")

    @property
    def effective_lr(self) -> float:
        """The optimiser's lr: --scale_lr multiplies it by the batch (one process, no accumulation)."""
        return self.learning_rate * self.train_batch_size if self.scale_lr else self.learning_rate


@dataclass
class InversionModels:
    """What textual inversion needs of an SD v1-family model: its tokenizer and text encoder (copied per class,
    never changed) and the frozen VAE, UNet and training noise schedule."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler

    @property
    def native_resolution(self) -> int:
        """The image size the UNet was trained at: its latent sample_size times the VAE's downsampling."""
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_inversion_models(model: str | Path, *, device: str | torch.device = "cpu") -> InversionModels:
    """The components of a diffusers SD folder (or hub id) as fine_tune.py loads them; VAE and UNet frozen."""
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").to(device)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").to(device)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    return InversionModels(tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
                           text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder"),
                           vae=vae, unet=unet,
                           noise_scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler"))


def add_tokens(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, tokens: Sequence[str]) -> list[int]:
    """Add `tokens` to the tokenizer (refusing one it has) and grow the text encoder's [V, D] input embeddings."""
    ids = []
    for token in tokens:
        if tokenizer.add_tokens(token) == 0:
            raise TextualInversionError(f"the tokenizer already contains the token {token}; a placeholder token must "
                                        f"be new (was this tokenizer given these embeddings already?).")
        ids.append(tokenizer.convert_tokens_to_ids(token))
    if len(tokenizer) > text_encoder.get_input_embeddings().weight.shape[0]:
        # mean_resizing=False: the new rows are overwritten by the caller, so skip estimating a covariance.
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return ids


def initializer_embedding(tokenizer: CLIPTokenizer, weight: torch.Tensor, word: str) -> torch.Tensor:
    """The [D] embedding a placeholder starts from: `word`'s row of weight [V, D] where it is one token (the recipe);
    else, as a fallback of ours (the recipe stops), the mean of the rows of the tokens it splits into."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    pieces = [i for i in ids if i != tokenizer.unk_token_id]
    if not pieces:
        raise TextualInversionError(f"the initializer word '{word}' has no token in this tokenizer (it encodes to "
                                    f"{ids}); choose a word the tokenizer knows.")
    if len(ids) > 1 or len(pieces) < len(ids):
        logger.warning("initializer '%s' is not one token of this tokenizer (%s): the placeholders start from the "
                       "mean of its pieces' embeddings", word, tokenizer.convert_ids_to_tokens(ids))
    return weight[pieces].mean(dim=0)


def add_placeholder_tokens(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, tokens: Sequence[str], *,
                           initializer: str) -> list[int]:
    """Add `tokens` and set each one's embedding row to the initializer's (fine_tune.py lines 491-512); their ids."""
    ids = add_tokens(tokenizer, text_encoder, tokens)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = initializer_embedding(tokenizer, weight, initializer)
    return ids


def apply_embeddings(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel,
                     embeddings: Mapping[str, torch.Tensor]) -> list[int]:
    """Add each {token: [D] tensor} to the tokenizer and set its row (their textual_inversion.py load_embeddings)."""
    weight = text_encoder.get_input_embeddings().weight
    wrong = {token: tuple(e.shape) for token, e in embeddings.items() if tuple(e.shape) != (weight.shape[1],)}
    if wrong:
        raise TextualInversionError(f"embeddings {wrong} do not fit this text encoder's width {weight.shape[1]}; "
                                    f"were they learned with another model?")
    ids = add_tokens(tokenizer, text_encoder, list(embeddings))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token_id, embedding in zip(ids, embeddings.values()):
            weight[token_id] = embedding.to(device=weight.device, dtype=weight.dtype)
    return ids


def save_embeddings(embeddings: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """torch.save {token: [D] tensor} on CPU, as their learned_embeds.bin / aggregate_embeddings.py files."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({token: e.detach().cpu() for token, e in embeddings.items()}, path)


def load_embeddings(path: str | Path) -> dict[str, torch.Tensor]:
    """The {token: [D] tensor} a save_embeddings (or their aggregate_embeddings.py) file holds."""
    embeddings = load_torch_file(path)
    if not isinstance(embeddings, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                                   for k, v in embeddings.items()):
        raise TextualInversionError(f"{path} does not hold {{token: tensor}} embeddings.")
    return embeddings


def preprocess_image(image: Image.Image, *, resolution: int, center_crop: bool = False) -> torch.Tensor:
    """An image as TextualInversionDataset prepares it, before the flip: [3, R, R] in [-1, 1], bicubic resize."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if center_crop:
        crop = min(array.shape[0], array.shape[1])
        h, w = array.shape[:2]
        array = array[(h - crop) // 2:(h + crop) // 2, (w - crop) // 2:(w + crop) // 2]
    resized = Image.fromarray(array).resize((resolution, resolution), resample=Image.BICUBIC)
    scaled = (np.asarray(resized, dtype=np.uint8) / 127.5 - 1.0).astype(np.float32)
    return torch.from_numpy(scaled).permute(2, 0, 1)


def restore_rows(weight: torch.Tensor, original: torch.Tensor, trained_ids: Sequence[int]) -> None:
    """Put back every row of weight [V, D] but `trained_ids` from original [V, D] (the recipe's index_no_updates)."""
    keep = ~torch.isin(torch.arange(weight.shape[0], device=weight.device),
                       torch.as_tensor(list(trained_ids), device=weight.device))
    with torch.no_grad():
        weight[keep] = original[keep]


def _batches(num_images: int, config: TextualInversionConfig, generator: torch.Generator):
    """Image indices of each step's batch: epochs of a shuffled `repeats`-fold list, the last batch of one short."""
    length = num_images * config.repeats
    step = 0
    while True:
        order = torch.randperm(length, generator=generator) % num_images
        for start in range(0, length, config.train_batch_size):
            if step == config.max_train_steps:
                return
            yield order[start:start + config.train_batch_size]
            step += 1


def denoising_loss(models: InversionModels, text_encoder: CLIPTextModel, pixels: torch.Tensor,
                   input_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The recipe's loss on images [B,3,R,R] and prompts [B, L]: MSE of the UNet's prediction of the noise (or of v)
    at uniform random timesteps, conditioned on the text encoder's states."""
    device = models.unet.device
    with torch.no_grad():
        posterior = models.vae.encode(pixels.to(device)).latent_dist
        # latent_dist.sample(generator), drawn on the (CPU) generator's device without diffusers' log line per call
        sample = torch.randn(posterior.mean.shape, generator=generator, dtype=posterior.mean.dtype).to(device)
        latents = (posterior.mean + posterior.std * sample) * models.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator).to(device)
    steps = models.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator).to(device)
    noisy = models.noise_scheduler.add_noise(latents, noise, timesteps)
    states = text_encoder(input_ids.to(device))[0]
    prediction = models.unet(noisy, timesteps, states).sample
    kind = models.noise_scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = models.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise TextualInversionError(f"textual inversion: unknown prediction type '{kind}' of the noise scheduler.")
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def train_placeholder(models: InversionModels, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel,
                      images: Sequence[Image.Image], token: str, *, config: TextualInversionConfig,
                      generator: torch.Generator) -> list[float]:
    """Train `token`'s row of text_encoder's input embeddings [V, D] in place (all other rows stay bit-identical);
    returns the loss of each step. The token must already be added (add_placeholder_tokens)."""
    if not images:
        raise TextualInversionError(f"textual inversion of {token}: no images to learn it from.")
    token_id = tokenizer.convert_tokens_to_ids(token)
    for template in config.templates:
        if token_id not in tokenizer(template.format(token)).input_ids:
            raise TextualInversionError(f"the prompt '{template.format(token)}' does not hold {token} as one token; "
                                        f"add it with add_placeholder_tokens first.")
    resolution = config.resolution or models.native_resolution
    pixels = torch.stack([preprocess_image(im, resolution=resolution, center_crop=config.center_crop)
                          for im in images])
    text_encoder.to(models.unet.device).train()
    text_encoder.requires_grad_(False)
    embeddings = text_encoder.get_input_embeddings()
    embeddings.weight.requires_grad_(True)
    optimizer = torch.optim.AdamW(embeddings.parameters(), lr=config.effective_lr,
                                  betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    original = embeddings.weight.detach().clone()
    losses = []
    progress = tqdm(total=config.max_train_steps, desc=f"textual inversion {token}", leave=False, mininterval=2)
    logger.info("textual inversion of %s: %d images, %d steps of batch %d, lr %g, resolution %d", token, len(images),
                config.max_train_steps, config.train_batch_size, config.effective_lr, resolution)
    for batch in _batches(len(images), config, generator):
        # Per item, as TextualInversionDataset.__getitem__: a random template, then the flip.
        draws = [(int(torch.randint(len(config.templates), (1,), generator=generator)),
                  bool(torch.rand(1, generator=generator) < config.flip_p)) for _ in batch]
        texts = [config.templates[t].format(token) for t, _ in draws]
        flips = torch.tensor([flip for _, flip in draws])
        chosen = pixels[batch]
        chosen = torch.where(flips[:, None, None, None], chosen.flip(-1), chosen)
        input_ids = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                              return_tensors="pt").input_ids
        loss = denoising_loss(models, text_encoder, chosen, input_ids, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        restore_rows(embeddings.weight, original, [token_id])
        losses.append(loss.item())
        progress.update(1)
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    progress.close()
    embeddings.weight.requires_grad_(False)
    return losses


def learn_embeddings(models: InversionModels, images_by_class: Mapping[str, Sequence[Image.Image]], *,
                     config: TextualInversionConfig = TextualInversionConfig()) -> dict[str, torch.Tensor]:
    """DA-Fusion's tokens: per class, a fresh copy of the tokenizer and text encoder, its token <class_name>
    initialised and trained on that class's images; {token: [D] tensor on CPU} (their aggregated file's content).
    Every class's run starts from the same seed, as fine_tune.py's."""
    tokens = [token_name(name) for name in images_by_class]
    clashes = sorted({t for t in tokens if tokens.count(t) > 1})
    if clashes:
        raise TextualInversionError(f"class names {[n for n in images_by_class if token_name(n) in clashes]} share "
                                    f"the tokens {clashes} (spaces become underscores); rename one of each pair.")
    learned = {}
    for class_name, images in images_by_class.items():
        token = token_name(class_name)
        tokenizer, text_encoder = copy.deepcopy(models.tokenizer), copy.deepcopy(models.text_encoder)
        [token_id] = add_placeholder_tokens(tokenizer, text_encoder, [token], initializer=config.initializer)
        train_placeholder(models, tokenizer, text_encoder, images, token, config=config,
                          generator=torch.Generator().manual_seed(config.seed))
        learned[token] = text_encoder.get_input_embeddings().weight[token_id].detach().cpu().clone()
    return learned


def images_by_class(dataset: LabeledImages) -> dict[str, list[Image.Image]]:
    """A dataset's images grouped by class name, in class order (what learn_embeddings takes)."""
    grouped: dict[str, list[Image.Image]] = {name: [] for name in dataset.classes}
    for index, sample in enumerate(dataset.samples):
        grouped[dataset.classes[sample.label]].append(dataset.load_image(index))
    return grouped
