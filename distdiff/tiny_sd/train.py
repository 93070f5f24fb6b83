"""Training a tiny SD from scratch on a CPU on a dataset's generator pool (used by scripts/train_tiny_sd.py).

RECIPES holds, per dataset, the architecture preset and the hyperparameters that differ from
TRAIN_DEFAULTS (the digits recipe); everything else is shared.

Two stages, as Stable Diffusion was built: (1) an AutoencoderKL trained on pixels (L1 + L2
reconstruction + a small KL term); its latent scaling factor is then set to 1 / latent std so
the diffusion model sees unit-variance latents, as SD v1's 0.18215 was chosen; (2) the VAE is
frozen and the class-prompt-conditioned UNet and the CLIP text encoder are trained jointly with
SD's epsilon-prediction objective on the scaled latents, dropping the prompt for a fraction of
samples so classifier-free guidance works. The text encoder is trained rather than frozen at
random init because the digit prompts differ in one token out of 77: trained, it can make the
class token dominate the embedding cheaply (it has 0.1M parameters and runs once per distinct
prompt in a batch).

Every step draws its randomness from a generator seeded with (seed, step), so a run resumed
from a stage checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm

from distdiff.data.datasets import DEFAULT_PROMPT
from distdiff.utils.files import atomic_torch_save
from distdiff.utils.settings import changed_settings

logger = logging.getLogger(__name__)


def images_tensor(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A LabeledImages dataset as images [N, 3, H, W] in [-1, 1] (SD's VAE input range) and labels [N]."""
    images = np.stack([np.asarray(dataset.load_image(i), dtype=np.float32) for i in range(len(dataset))])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, torch.tensor(dataset.labels, dtype=torch.long)


def random_shift(images: torch.Tensor, *, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image [B, C, H, W] by up to `max_shift` pixels, filling with the background (-1)."""
    if max_shift == 0:
        return images
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    height, width = images.shape[-2:]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())])


def vae_loss(vae, images: torch.Tensor, *, batch_size: int, kl_weight: float, max_shift: int,
             generator: torch.Generator) -> torch.Tensor:
    """L1 + L2 reconstruction of a random shifted batch plus `kl_weight` * KL per latent element."""
    index = torch.randint(len(images), (batch_size,), generator=generator)
    batch = random_shift(images[index], max_shift=max_shift, generator=generator)
    posterior = vae.encode(batch).latent_dist
    latents = posterior.sample(generator=generator)
    reconstruction = vae.decode(latents).sample
    kl = posterior.kl().mean() / latents[0].numel()
    return F.l1_loss(reconstruction, batch) + F.mse_loss(reconstruction, batch) + kl_weight * kl


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, *, copies: int, max_shift: int, seed: int,
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior means and stds [N * copies, 4, h, w] of the images and `copies - 1` shifted versions,
    and the index [N * copies] of each row's source image."""
    generator = torch.Generator().manual_seed(seed)
    means, stds, sources = [], [], []
    for copy in range(copies):
        shifted = images if copy == 0 else random_shift(images, max_shift=max_shift, generator=generator)
        for start in range(0, len(images), batch_size):
            posterior = vae.encode(shifted[start:start + batch_size]).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
        sources.append(torch.arange(len(images)))
    return torch.cat(means), torch.cat(stds), torch.cat(sources)


def latent_scaling_factor(vae, images: torch.Tensor, *, seed: int) -> float:
    """1 / std of the VAE's sampled latents of `images`, the rule behind SD v1's 0.18215."""
    means, stds, _ = encode_latents(vae, images, copies=1, max_shift=0, seed=seed)
    latents = means + stds * torch.randn(means.shape, generator=torch.Generator().manual_seed(seed))
    return float(1.0 / latents.std())


def prompt_table(tokenizer, classes: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """Token ids [len(templates) * C + 1, max_length] of every (template, class) prompt, then the empty
    prompt, tokenized as diffusers' SD pipelines do (padded to model_max_length)."""
    prompts = [template.format(name) for template in templates for name in classes] + [""]
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def unet_loss(unet, text_encoder, scheduler, latent_means: torch.Tensor, latent_stds: torch.Tensor,
              labels: torch.Tensor, prompt_ids: torch.Tensor, *, num_classes: int, scaling_factor: float,
              batch_size: int, prompt_dropout: float, snr_gamma: float, generator: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted epsilon-prediction loss on a random batch of scaled latents [N, 4, h, w].

    `labels` [N] pick rows of `prompt_ids` (templates x classes, then the empty prompt); with
    probability `prompt_dropout` a sample gets the empty prompt (classifier-free guidance)."""
    index = torch.randint(len(latent_means), (batch_size,), generator=generator)
    noise_shape = latent_means[index].shape
    latents = latent_means[index] + latent_stds[index] * torch.randn(noise_shape, generator=generator)
    latents = latents * scaling_factor
    noise = torch.randn(noise_shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    num_templates = (len(prompt_ids) - 1) // num_classes
    template = torch.randint(num_templates, (batch_size,), generator=generator)
    prompt = template * num_classes + labels[index]
    dropped = torch.rand(batch_size, generator=generator) < prompt_dropout
    prompt = torch.where(dropped, torch.full_like(prompt, len(prompt_ids) - 1), prompt)
    unique, inverse = torch.unique(prompt, return_inverse=True)
    hidden = text_encoder(prompt_ids[unique])[0][inverse]
    prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
    per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma) / snr  # Min-SNR-gamma (Hang et al. 2023), as diffusers' --snr_gamma
    return (weights * per_sample).mean()


def train_stage(modules: dict[str, torch.nn.Module], loss_fn: Callable[[torch.Generator], torch.Tensor], *,
                steps: int, lr: float, warmup_steps: int, seed: int, state_path: Path, save_every: int,
                hyperparameters: dict, ema_max_decay: float | None = None, desc: str = "train") -> float:
    """AdamW + cosine schedule over `steps` steps of `loss_fn(generator)`, resumable from `state_path`.

    With `ema_max_decay` an EMA of all trained weights (warmup power 3/4) is kept and copied into
    the modules at the end. Returns the mean loss of the last 50 steps run (nan if already done)."""
    params = [p for module in modules.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)
    ema = EMAModel(params, decay=ema_max_decay, use_ema_warmup=True, power=0.75) if ema_max_decay else None
    start = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        changed = changed_settings(state["hyperparameters"], hyperparameters)
        if changed:
            raise ValueError(f"{state_path} was written with other settings {changed} (saved, asked); pass the "
                             f"same flags to resume, or delete the state folder to start again.")
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start = state["step"]
        logger.info("resuming %s from step %d (%s)", desc, start, state_path)
    for module in modules.values():
        module.train()
    losses = []
    progress = tqdm(range(start, steps), initial=start, total=steps, desc=desc)
    for step in progress:
        loss = loss_fn(torch.Generator().manual_seed(seed * 1_000_003 + step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            atomic_torch_save({"step": step + 1, "hyperparameters": hyperparameters, "optimizer": optimizer.state_dict(),
                          "modules": {name: module.state_dict() for name, module in modules.items()},
                          "lr_scheduler": lr_scheduler.state_dict(), "ema": ema.state_dict() if ema else None},
                         state_path)
    if ema is not None:
        ema.copy_to(params)
    for module in modules.values():
        module.eval()
    return float(np.mean(losses[-50:])) if losses else float("nan")


# Defaults of `train_tiny_sd`, sized for about 12 minutes on 2 otherwise idle CPU cores (900 UNet
# steps already gave 93% txt2img label fidelity; 1200 leave margin over the 90% target).
TRAIN_DEFAULTS = {
    "vae_steps": 300,
    "vae_batch_size": 64,
    "vae_lr": 2e-3,
    "kl_weight": 1e-3,  # small, as SD's VAE: keeps latents nearly deterministic
    "max_shift": 1,  # pixels of random translation (data augmentation, never a flip: digits)
    "latent_copies": 4,  # encoded versions of each image for stage 2 (1 original + shifted ones)
    "unet_steps": 1200,
    "unet_batch_size": 128,
    "unet_lr": 1e-3,
    "warmup_steps": 50,
    "prompt_dropout": 0.1,  # SD v1 fine-tuning dropped 10% of text conditioning for guidance
    "snr_gamma": 5.0,  # Min-SNR-gamma paper's recommended gamma
    "ema_max_decay": 0.999,
    "save_every": 100,
}
# Training prompts: the dataset's own template first, plus the paper's default class prompt.
EXTRA_TEMPLATES = (DEFAULT_PROMPT,)


@dataclass(frozen=True)
class Recipe:
    """How one dataset's tiny SD is trained: its architecture preset and its departures from TRAIN_DEFAULTS."""

    preset: str
    overrides: dict = field(default_factory=dict)
    state_dir: str = "runs/train_tiny_sd"  # resumable state of scripts/train_tiny_sd.py


RECIPES = {
    "digits": Recipe("digits"),
    # 59,800 pool images: about 1 epoch of VAE and 5 of UNet in the ~45 minutes the 2-core CPU had
    # (0.57 s per VAE step, 0.89 s per UNet step at 1 thread, measured); so many images need no
    # translated copies, and the garments are centred like the test set's, so no shift either.
    "fashion-mnist": Recipe("fashion", {"vae_steps": 800, "unet_steps": 2400, "max_shift": 0, "latent_copies": 1},
                            state_dir="runs/train_tiny_sd_fashion"),
}


def recipe_hyperparameters(name: str) -> dict:
    """TRAIN_DEFAULTS with the overrides of dataset `name`'s recipe."""
    return {**TRAIN_DEFAULTS, **RECIPES[name].overrides}


def train_command(model_dir: str | Path) -> str:
    """The scripts/train_tiny_sd.py command writing `model_dir`: the recipe of the dataset whose default model it is."""
    from distdiff.data.registry import dataset_spec

    for name in RECIPES:
        if Path(dataset_spec(name).sd_model) == Path(model_dir):
            return f"python scripts/train_tiny_sd.py --dataset {name}"
    return f"python scripts/train_tiny_sd.py --output_dir {model_dir}"


def train_tiny_sd(dataset, output_dir: str | Path, *, seed: int = 0, state_dir: str | Path, preset: str = "digits",
                  **hyperparameters) -> dict:
    """Train architecture `preset` on `dataset` (stage 1 VAE, stage 2 UNet + text encoder), save it in
    diffusers' folder format at `output_dir`, and return a summary dict (losses, scaling factor)."""
    from distdiff.tiny_sd.model import build_tiny_sd, save_components

    unknown = sorted(set(hyperparameters) - set(TRAIN_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown training hyperparameters {unknown}; known: {sorted(TRAIN_DEFAULTS)}.")
    hp = {**TRAIN_DEFAULTS, **hyperparameters, "seed": seed, "preset": preset}
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    images, labels = images_tensor(dataset)
    components = build_tiny_sd(seed=seed, preset=preset)
    vae, unet, text_encoder = components["vae"], components["unet"], components["text_encoder"]

    vae_hp = {k: hp[k] for k in ("seed", "preset", "vae_steps", "vae_batch_size", "vae_lr", "kl_weight", "max_shift",
                                 "warmup_steps")}
    unet_hp = {k: v for k, v in hp.items() if k != "save_every"}  # saving more often changes no result
    vae_final = train_stage(
        {"vae": vae}, lambda g: vae_loss(vae, images, batch_size=hp["vae_batch_size"], kl_weight=hp["kl_weight"],
                                          max_shift=hp["max_shift"], generator=g),
        steps=hp["vae_steps"], lr=hp["vae_lr"], warmup_steps=hp["warmup_steps"], seed=seed,
        state_path=state_dir / "vae.pt", save_every=hp["save_every"], hyperparameters=vae_hp, desc="stage 1: VAE")
    vae.requires_grad_(False)
    scaling_factor = latent_scaling_factor(vae, images, seed=seed)
    vae.register_to_config(scaling_factor=scaling_factor)
    logger.info("VAE latent scaling factor: %.4f", scaling_factor)

    means, stds, sources = encode_latents(vae, images, copies=hp["latent_copies"], max_shift=hp["max_shift"],
                                          seed=seed)
    templates = (dataset.prompt_template,) + tuple(t for t in EXTRA_TEMPLATES if t != dataset.prompt_template)
    prompt_ids = prompt_table(components["tokenizer"], dataset.classes, templates)
    scheduler = components["scheduler"]
    unet_final = train_stage(
        {"unet": unet, "text_encoder": text_encoder},
        lambda g: unet_loss(unet, text_encoder, scheduler, means, stds, labels[sources], prompt_ids,
                            num_classes=len(dataset.classes), scaling_factor=scaling_factor,
                            batch_size=hp["unet_batch_size"], prompt_dropout=hp["prompt_dropout"],
                            snr_gamma=hp["snr_gamma"], generator=g),
        steps=hp["unet_steps"], lr=hp["unet_lr"], warmup_steps=hp["warmup_steps"], seed=seed,
        state_path=state_dir / "unet.pt", save_every=hp["save_every"], hyperparameters=unet_hp,
        ema_max_decay=hp["ema_max_decay"], desc="stage 2: UNet")
    save_components(components, output_dir)
    return {"vae_loss": vae_final, "unet_loss": unet_final, "scaling_factor": scaling_factor,
            "num_images": len(images), "templates": templates}
