"""Loading a Stable Diffusion model's components (hub id or local diffusers folder) for the pipeline.

The components are loaded one by one with diffusers/transformers (`X.from_pretrained(model,
subfolder=...)`, the same call for a hub id and a local folder). SD 1.x (epsilon prediction) and
SD 2.x (v-prediction) work; other pipelines (SDXL, inpainting, upscalers) are refused before any
weights load, a local path with no folder is said to be missing (MissingModelError) instead of
failing as a malformed hub id, and a damaged file of a local folder is named (ModelLoadError)
instead of reported as a missing model.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from distdiff.errors import UserError


class ModelLoadError(UserError, OSError):
    """--model cannot be loaded or driven; also an OSError (errno None), as diffusers reports a missing model."""


class MissingModelError(ModelLoadError):
    """--model is a local path with no folder there."""


# Pipelines whose components this sampler drives (SD 1.x: epsilon prediction, SD 2.x: v-prediction or epsilon).
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
SUPPORTED_MODELS = ("Stable Diffusion 1.x and 2.x only: a diffusers-format folder of one (model_index.json naming "
                    "StableDiffusionPipeline, with unet/, vae/, text_encoder/, tokenizer/, scheduler/) or its hub id, "
                    "e.g. CompVis/stable-diffusion-v1-4 or stabilityai/stable-diffusion-2-1-base")
# UNet config keys that add conditioning our loop does not pass (SDXL's text_time embeddings, the x4
# upscaler's noise-level class): such a UNet fails mid-sampling or samples wrongly, so it is refused up front.
UNSUPPORTED_UNET_KEYS = {"addition_embed_type": "added conditioning (SDXL-style)",
                         "class_embed_type": "class-embedding conditioning (e.g. the x4 upscaler)"}

# How one loads each component; `dtype` is what diffusers calls torch_dtype and transformers dtype.
COMPONENT_LOADERS: dict[str, Callable] = {
    "unet": lambda model, dtype, hub: UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype,
                                                                           **hub),
    "vae": lambda model, dtype, hub: AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype, **hub),
    "text_encoder": lambda model, dtype, hub: CLIPTextModel.from_pretrained(model, subfolder="text_encoder",
                                                                            dtype=dtype, **hub),
    "tokenizer": lambda model, dtype, hub: CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **hub),
    "scheduler": lambda model, dtype, hub: DDIMScheduler.from_pretrained(model, subfolder="scheduler", **hub),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder")  # the others hold configs and vocabularies only


def _read_safetensors_header(path: Path) -> None:
    """safetensors checks its header covers the whole file: a truncated or overwritten file fails here, cheaply."""
    with safe_open(str(path), framework="pt"):
        pass


def _read_torch_file(path: Path) -> None:
    """Load a torch pickle (.bin); memory-mapped where it is a zip archive, so only a broken one is read in full."""
    torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _read_json(path: Path) -> None:
    """Parse a config, tokenizer or index file."""
    json.loads(path.read_text(encoding="utf-8"))


# file suffix -> (reader that raises on a damaged file, the exceptions that mean "damaged")
FILE_CHECKS: dict[str, tuple[Callable[[Path], None], tuple[type[BaseException], ...]]] = {
    ".safetensors": (_read_safetensors_header, (SafetensorError,)),
    ".bin": (_read_torch_file, (RuntimeError, pickle.UnpicklingError, EOFError)),
    ".json": (_read_json, (ValueError,)),  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
}


def damaged_file_message(folder: Path, component: str) -> str | None:
    """Why `folder`/`component` cannot load, one line naming the file (truncated/corrupt, or no weights); else None."""
    sub = folder / component
    files = sorted(sub.iterdir()) if sub.is_dir() else []
    for path in files:
        if path.suffix not in FILE_CHECKS:
            continue
        read, damaged = FILE_CHECKS[path.suffix]
        try:
            read(path)
        except damaged as err:
            reason = str(err).splitlines()[0].split(". ")[0]  # torch's message goes on for several sentences
            return f"{path} is truncated or corrupt ({reason}); re-download or re-copy the model folder."
    if component in WEIGHTED_COMPONENTS and sub.is_dir() and not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        return f"{sub} holds no weights file (*.safetensors or *.bin); re-download or re-copy the model folder."
    return None


def is_local_path(model: str) -> bool:
    """Whether `model` can only be a local path, never a hub id (`name` or `org/name`, starting with a letter or
    digit): absolute, starting with a dot, or more than two names deep."""
    return Path(model).is_absolute() or model.startswith(".") or model.count("/") > 1


def check_model_exists(model: str) -> None:
    """Refuse a local path with no folder there; diffusers would take it for a hub id and fail on the id's form."""
    if is_local_path(model) and not Path(model).is_dir():
        what = "is a file, not a folder" if Path(model).exists() else "does not exist"
        raise MissingModelError(f"--model {model} {what}; give a diffusers Stable Diffusion folder or a hub id.")


def check_model_family(model: str, hub: dict) -> None:
    """Refuse pipelines this sampler cannot drive (SDXL, inpainting, upscalers) and a local folder missing a
    component's subfolder, before any weights load."""
    try:
        index = DiffusionPipeline.load_config(model, **hub)
    except OSError:  # no model_index.json (a hand-made folder, an unknown id): the component loaders report that
        index = None
    pipeline = index.get("_class_name", "?") if index is not None else None
    if index is not None and pipeline not in SUPPORTED_PIPELINES:
        raise ModelLoadError(f"--model '{model}' is a {pipeline}, which this pipeline cannot drive; it supports "
                             f"{SUPPORTED_MODELS}.")
    missing = [name for name in COMPONENT_LOADERS if Path(model).is_dir() and not (Path(model) / name).is_dir()]
    if missing:  # diffusers would only say "no file named config.json in <model>"
        raise ModelLoadError(f"--model {model} is a folder without {', '.join(f'{name}/' for name in missing)}; a "
                             f"diffusers Stable Diffusion folder holds {', '.join(COMPONENT_LOADERS)} (and "
                             f"model_index.json).")
    if index is None:
        return
    unet = UNet2DConditionModel.load_config(model, subfolder="unet", **hub)
    reasons = [why for key, why in UNSUPPORTED_UNET_KEYS.items() if unet.get(key) is not None]
    if unet.get("in_channels") != unet.get("out_channels"):  # inpainting/depth/upscaler inputs: extra channels
        reasons.append(f"{unet.get('in_channels')} UNet input channels for {unet.get('out_channels')} latent ones")
    if reasons:
        raise ModelLoadError(f"--model '{model}' has a UNet with {'; '.join(reasons)}, which this pipeline cannot "
                             f"drive; it supports {SUPPORTED_MODELS}.")


def load_components(model: str, *, dtype: torch.dtype, local_files_only: bool = False) -> dict:
    """SD 1.x/2.x components {unet, vae, text_encoder, tokenizer, scheduler} from a hub id or a local diffusers
    folder (same code path for both), the weights in `dtype`.

    A hub id is downloaded into the Hugging Face cache when it is not cached and the hub is
    reachable; `local_files_only=True` (or HF_HUB_OFFLINE=1) forbids that and uses the cache only.
    Raises MissingModelError for a local path with no folder, ModelLoadError for another model
    family, a damaged file of a local folder (named), or a model that is neither a folder nor a
    loadable hub id.
    """
    hub = {"local_files_only": local_files_only}
    components = {}
    check_model_exists(model)
    try:
        check_model_family(model, hub)
        for name, load in COMPONENT_LOADERS.items():
            components[name] = load(model, dtype, hub)
    except ModelLoadError:
        raise
    except (OSError, ValueError, SafetensorError) as err:  # transformers lets a SafetensorError through as is
        # diffusers reports a damaged local file as a missing model; name the file instead.
        failed = next(name for name in COMPONENT_LOADERS if name not in components)
        damaged = damaged_file_message(Path(model), failed) if Path(model).is_dir() else None
        if damaged is not None:
            raise ModelLoadError(damaged) from err
        hub_id = "a hub id in the local Hugging Face cache (--local_files_only)" if local_files_only else \
            "a loadable hub id"
        raise ModelLoadError(f"--model '{model}' is neither a diffusers folder (model_index.json, unet/, vae/, "
                             f"text_encoder/, tokenizer/, scheduler/) nor {hub_id}: {err}") from err
    return components
