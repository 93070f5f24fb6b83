"""On-disk cache of the VAE posteriors of source images (docs/METHOD.md#pipeline, step 3).

A cache folder is keyed by the model, resolution, crop, precision and a fingerprint of the VAE
encoder's weights, so a re-saved model folder never serves stale latents. Each source image
has one file, `<dataset>/<class>/<stem>.pt` (a hash of the stem where that name is too long for
the file system), holding the posterior parameters (mean, logvar) in float32 and a fingerprint of
the source (path, size, mtime or the pixel bytes); a changed source is re-encoded. Storing the
distribution, not a sample, lets every synthetic image draw its own latent sample with its own
generator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from distdiff.data.datasets import LabeledImages, dataset_slug
from distdiff.utils.files import UnreadableFileError, atomic_torch_save, fitting_name, load_torch_file
from distdiff.pipelines.sampling import encode_latent_dist, image_to_tensor

logger = logging.getLogger(__name__)


def vae_fingerprint(sd) -> str:
    """Hash of the VAE encoder's weights (the part that makes latents)."""
    digest = hashlib.sha256()
    modules = {"encoder": sd.vae.encoder, "quant_conv": getattr(sd.vae, "quant_conv", None)}
    for prefix, module in modules.items():
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def source_fingerprint(dataset: LabeledImages, index: int) -> str:
    """Identity of a source image's content: file path + size + mtime, or a hash of in-memory pixels."""
    source = dataset.samples[index].source
    if isinstance(source, np.ndarray):
        return "array:" + hashlib.sha1(np.ascontiguousarray(source).tobytes()).hexdigest()
    stat = os.stat(source)
    return f"file:{os.path.abspath(source)}:{stat.st_size}:{stat.st_mtime_ns}"


class LatentCache:
    """VAE posteriors [2C, h, w] of a dataset's images under `root/<model key>/<dataset>/<class>/<stem>.pt`."""

    def __init__(self, root: str | Path, sd, *, model: str, resolution: int, crop: str,
                 precision: str):
        model_id = str(Path(model).resolve()) if Path(model).is_dir() else model
        key = {"model": model_id, "resolution": resolution, "crop": crop, "precision": precision,
               "vae": vae_fingerprint(sd)}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_id).name or model_id)
        self.dir = Path(root) / fitting_name(name, f"-{resolution}px-{crop}-{digest}")
        self.sd, self.resolution, self.crop, self.key = sd, resolution, crop, key

    def path(self, dataset: LabeledImages, index: int) -> Path:
        """Cache file of one source image."""
        sample = dataset.samples[index]
        return (self.dir / dataset_slug(dataset.name or "dataset") / dataset.classes[sample.label] /
                fitting_name(sample.stem, ".pt"))

    def _load(self, dataset: LabeledImages, index: int) -> torch.Tensor | None:
        path = self.path(dataset, index)
        if not path.is_file():
            return None
        try:
            payload = load_torch_file(path)
        except UnreadableFileError as err:  # e.g. overwritten, or cut short on a disk that lies about fsync
            logger.warning("%s; re-encoding that image", err)
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("params"), torch.Tensor):
            logger.warning("%s is not a latent cache entry; re-encoding that image", path)
            return None
        if payload.get("source") != source_fingerprint(dataset, index):
            logger.info("source of %s changed; re-encoding it", path)
            return None
        return payload["params"]

    def ensure(self, dataset: LabeledImages, indices: Sequence[int], *, batch_size: int,
               progress: bool = True) -> None:
        """Encode and store every source in `indices` that has no valid cache entry."""
        missing = [i for i in indices if self._load(dataset, i) is None]
        if not missing:
            return
        logger.info("encoding %d source images into %s", len(missing), self.dir)
        for begin in tqdm(range(0, len(missing), batch_size), desc="VAE latents", disable=not progress):
            chunk = missing[begin:begin + batch_size]
            images = torch.stack([image_to_tensor(dataset.load_image(i), resolution=self.resolution,
                                                  crop=self.crop) for i in chunk])
            params = encode_latent_dist(self.sd, images)
            for i, p in zip(chunk, params):
                atomic_torch_save({"params": p.clone(), "source": source_fingerprint(dataset, i), "key": self.key},
                                  self.path(dataset, i))

    def get(self, dataset: LabeledImages, indices: Sequence[int]) -> torch.Tensor:
        """Posteriors [B, 2C, h, w] of `indices` (encoding any that are missing)."""
        out = [self._load(dataset, i) for i in indices]
        if any(p is None for p in out):
            self.ensure(dataset, indices, batch_size=len(indices), progress=False)
            out = [self._load(dataset, i) for i in indices]
        return torch.stack(out)
