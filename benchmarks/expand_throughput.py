"""Throughput of the DistDiff expansion: batched generation vs the paper's one-image-at-a-time path.

Both paths call distdiff.pipelines.distdiff_img2img.DistDiffImg2ImgPipeline as expand.py does, at the paper's
settings (docs/METHOD.md#defaults: 512 px, DDIM 50 steps, strength 0.5, CFG 7.5, transform
guidance, period 2, M 20) on Stable Diffusion v1.x components built at full size from their published configurations
with random weights (timing does not depend on weight values; nothing is downloaded) and a
randomly initialised ResNet-50 guide with random prototypes.

- batched: B copies per pipeline call, in --precision, no gradient checkpointing
  (optionally with a torch.compile'd UNet);
- reference: one image and one copy per call, fp16 (fp32 on CPU), gradient checkpointing: how
  the paper's code runs.

Both run in the same process on the same weights and the same images, so the speed-up is a ratio
measured side by side, and the batched images are compared with the reference ones (speed work
must keep results identical). `--quick` runs the same comparison on CPU with a scaled-down
model. See benchmarks/README.md; measured figures are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from distdiff.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, build_classifier
from distdiff.method.guidance import GUIDANCE_PERIOD, GUIDANCE_STEP, GuideEnergy
from distdiff.method.transform import TransformGuidance
from distdiff.method.observers import EnergyRecorder
from distdiff.pipelines.distdiff_img2img import DistDiffImg2ImgPipeline, from_components
from distdiff.method.prototypes import Prototypes
from distdiff.pipelines.sampling import (GUIDANCE_SCALE, PRECISION, PRECISIONS, STEPS, STRENGTH, PromptEmbeddings,
                                         encode_latent_dist, encode_prompts, image_seed, img2img_start_index,
                                         make_generators)
from distdiff.utils.files import atomic_write_text
from distdiff.tiny_sd.model import SCHEDULER_CONFIG, build_tokenizer
from sd_configs import SD_V1_TEXT_ENCODER, SD_V1_UNET, SD_V1_VAE  # benchmarks/sd_configs.py, beside this script

# SD v1's noise schedule as a DDIM scheduler (the paper samples with DDIM, docs/METHOD.md#pipeline).
SD_V1_SCHEDULER = SCHEDULER_CONFIG

# --quick: the same block layout with 10x fewer channels (UNet ~8.6M parameters), a 2-layer
# 64-wide text encoder, 64 px images: a CPU-sized stand-in that exercises the same code, not SD's cost.
QUICK_UNET = {**SD_V1_UNET, "sample_size": 8, "block_out_channels": (32, 64, 128, 128), "cross_attention_dim": 64}
QUICK_VAE = {**SD_V1_VAE, "sample_size": 64, "block_out_channels": (32, 64, 128, 128)}
QUICK_TEXT_ENCODER = {**SD_V1_TEXT_ENCODER, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "projection_dim": 64}

GUIDE_ARCH = "resnet50"  # the paper's guide (docs/METHOD.md#defaults)
NUM_CLASSES = 10  # prototypes and prompts cycle over 10 random classes
NUM_GROUPS = 3  # the paper's K = 3 (docs/METHOD.md#defaults)
SOURCE_POOL = 4  # distinct random source images the items cycle over
REFERENCE_PRECISION = "fp16"  # the authors' code runs SD in fp16; fp32 on CPU
SEED = 0


@dataclass(frozen=True)
class Scale:
    """Model tables and default run settings of one benchmark size."""

    unet: dict
    vae: dict
    text_encoder: dict
    resolution: int
    steps: int
    guide_size: int
    batch_sizes: tuple[int, ...]
    repeats: int
    threads: int | None  # CPU intra-op threads; None keeps torch's default (OMP_NUM_THREADS or all cores)


SCALES = {
    # the paper's 512 px, DDIM 50 steps; guide input 224 px (docs/METHOD.md#defaults).
    "full": Scale(SD_V1_UNET, SD_V1_VAE, SD_V1_TEXT_ENCODER, resolution=512, steps=50, guide_size=224,
                  batch_sizes=(1, 2, 4, 8, 16), repeats=2, threads=None),
    "quick": Scale(QUICK_UNET, QUICK_VAE, QUICK_TEXT_ENCODER, resolution=64, steps=10, guide_size=64,
                   batch_sizes=(1, 2, 4), repeats=2, threads=1),
}
# Why --quick is single-threaded by default: on a 2-core machine shared with other jobs, two
# OpenMP threads ran the quick model's ops ~40x slower than one (each op waits for a descheduled
# thread), which swamps what the benchmark compares.


def build_components(scale: Scale, *, seed: int = SEED) -> dict:
    """Random-weight SD components from `scale`'s tables: dict(unet, vae, text_encoder, tokenizer, scheduler)."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(**scale.text_encoder, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return {"unet": UNet2DConditionModel(**scale.unet).eval(), "vae": AutoencoderKL(**scale.vae).eval(),
            "text_encoder": CLIPTextModel(text_config).eval(), "tokenizer": tokenizer,
            "scheduler": DDIMScheduler(**SD_V1_SCHEDULER)}


def random_prototypes(num_classes: int, dim: int, *, k: int = NUM_GROUPS, seed: int = SEED) -> Prototypes:
    """Unit-norm random class [C, D] and group [C, K, D] prototypes, every group valid."""
    generator = torch.Generator().manual_seed(seed)
    classes = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)
    groups = F.normalize(torch.randn(num_classes, k, dim, generator=generator), dim=2)
    return Prototypes(classes, groups, torch.ones(num_classes, k, dtype=torch.bool), {"benchmark": "random"})


def guidance_step_for(steps: int) -> int:
    """M at the paper's place in the schedule: 20 of 50 steps, the same fraction for other --steps."""
    return round(steps * GUIDANCE_STEP / STEPS)


def schedule_fits(steps: int) -> bool:
    """Whether `steps` DDIM steps leave room for M >= period look-ahead steps after the first img2img step."""
    m = guidance_step_for(steps)
    return m >= GUIDANCE_PERIOD and steps - m >= img2img_start_index(steps, STRENGTH)


def source_images(resolution: int, *, count: int = SOURCE_POOL, seed: int = SEED) -> torch.Tensor:
    """Random source images [count, 3, R, R] in [-1, 1] (the VAE's input range)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, resolution, resolution, generator=generator) * 2.0 - 1.0


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Runner:
    """One generation path: SD on a device, the guide, cached prompt embeddings and source posteriors."""

    sd: DistDiffImg2ImgPipeline
    guide: GuideEnergy
    guidance: TransformGuidance
    prompts: PromptEmbeddings
    posteriors: torch.Tensor  # [P, 2C, h, w] VAE posteriors of the source pool
    steps: int
    encode_s_per_image: float = float("nan")

    def generate(self, indices: Sequence[int]) -> torch.Tensor:
        """One pipeline call for work items `indices` -> images [B, 3, R, R] in [0, 1] on CPU (energies
        recorded, as expand.py records them)."""
        pool = self.posteriors.shape[0]
        labels = torch.tensor([i % NUM_CLASSES for i in indices])
        generators = make_generators([image_seed(SEED, "benchmark", i) for i in indices])
        result = self.sd(latent_params=self.posteriors[[i % pool for i in indices]], labels=labels,
                         generator=generators, prompt_embeds=self.prompts, strength=STRENGTH,
                         num_inference_steps=self.steps, guidance_scale=GUIDANCE_SCALE, guidance=self.guidance,
                         guide=self.guide, observers=[EnergyRecorder(self.guide, labels)])
        return result.images


def make_runner(components: dict, guide_model: torch.nn.Module, prototypes: Prototypes, images: torch.Tensor, *,
                device: torch.device, precision: str, gradient_checkpointing: bool, steps: int, guide_size: int,
                compile_unet: bool = False) -> Runner:
    """A path on its own copy of `components`; encodes the sources one at a time, timing the VAE encoder."""
    sd = from_components(copy.deepcopy(components), device=device, precision=precision,
                         gradient_checkpointing=gradient_checkpointing)
    if compile_unet:
        sd.unet.compile()
    guide = GuideEnergy(guide_model, prototypes, image_size=guide_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    guidance = TransformGuidance(guidance_step=guidance_step_for(steps), period=GUIDANCE_PERIOD)
    prompts = encode_prompts(sd, [f"a photo of a class {c}." for c in range(NUM_CLASSES)])
    encode_latent_dist(sd, images[:1])  # warm-up, excluded
    synchronize(device)
    start = time.perf_counter()
    posteriors = torch.cat([encode_latent_dist(sd, images[i:i + 1]) for i in range(images.shape[0])])
    synchronize(device)
    encode_s = (time.perf_counter() - start) / images.shape[0]
    return Runner(sd, guide, guidance, prompts, posteriors, steps, encode_s)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what was measured): CUDA peak allocation since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1024 if sys.platform != "darwin" else 1)
    return rss_bytes / 2**30, "peak RSS of the whole process so far (resource.getrusage; cannot be reset)"


def measure(runner: Runner, *, batch_size: int, repeats: int) -> tuple[dict, torch.Tensor]:
    """Time `repeats` calls of `batch_size` items after one untimed warm-up call -> (row, images of items 0..)."""
    device = runner.sd.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runner.generate(range(-batch_size, 0))  # warm-up on items of their own, excluded from timing
    synchronize(device)
    start = time.perf_counter()
    images = [runner.generate(range(r * batch_size, (r + 1) * batch_size)) for r in range(repeats)]
    synchronize(device)
    seconds = time.perf_counter() - start
    count = batch_size * repeats
    memory, _ = peak_memory(device)
    images = torch.cat(images)
    # Random weights in half precision could overflow; the timing stands, but say so.
    row = {"batch_size": batch_size, "status": "ok", "images": count, "seconds": seconds,
           "images_per_s": count / seconds, "s_per_image": seconds / count, "peak_memory_gib": memory,
           "all_finite": bool(torch.isfinite(images).all())}
    return row, images


def release(device: torch.device) -> None:
    """Free what an out-of-memory attempt or a finished path left on the GPU."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_or_oom(runner: Runner, *, batch_size: int, repeats: int) -> tuple[dict, torch.Tensor | None]:
    """`measure`, with a CUDA out-of-memory error reported as an OOM row instead of ending the sweep."""
    try:
        return measure(runner, batch_size=batch_size, repeats=repeats)
    except torch.cuda.OutOfMemoryError:
        pass
    release(runner.sd.device)  # outside the except block, so the traceback's tensors can be freed
    return {"batch_size": batch_size, "status": "OOM"}, None


def max_abs_diff(images: torch.Tensor | None, reference: torch.Tensor | None) -> float | None:
    """Largest pixel difference (images in [0, 1]) over the items both paths made; None if either failed."""
    if images is None or reference is None:
        return None
    count = min(images.shape[0], reference.shape[0])
    value = float((images[:count] - reference[:count]).abs().max())
    return value if math.isfinite(value) else None


def run_benchmark(scale: Scale, *, device: torch.device, precision: str, batch_sizes: Sequence[int], repeats: int,
                  resolution: int, steps: int, compile_unet: bool = False, report=print) -> dict:
    """Reference path, then the batched path at each batch size; rows of measurements and a summary."""
    components = build_components(scale)
    unet_parameters = sum(p.numel() for p in components["unet"].parameters())
    quick = scale is SCALES["quick"]
    report(f"UNet parameters: {unet_parameters:,} ({'scaled-down quick model' if quick else 'SD v1.x full size'})")
    torch.manual_seed(SEED)
    guide_model = build_classifier(GUIDE_ARCH, NUM_CLASSES).to(device)
    prototypes = random_prototypes(NUM_CLASSES, guide_model.num_features)
    images = source_images(resolution)
    settings = {"steps": steps, "guide_size": scale.guide_size}

    runner = make_runner(components, guide_model, prototypes, images, device=device, precision=REFERENCE_PRECISION,
                         gradient_checkpointing=True, **settings)
    ref_row, ref_images = measure_or_oom(runner, batch_size=1, repeats=repeats)
    ref_row.update(mode="reference", dtype=str(runner.sd.dtype).removeprefix("torch."), gradient_checkpointing=True,
                   vae_encode_s_per_image=runner.encode_s_per_image)
    rows = [ref_row]
    report(format_row(ref_row))
    del runner
    release(device)

    runner = make_runner(components, guide_model, prototypes, images, device=device, precision=precision,
                         gradient_checkpointing=False, compile_unet=compile_unet, **settings)
    for batch_size in batch_sizes:
        row, batch_images = measure_or_oom(runner, batch_size=batch_size, repeats=repeats)
        row.update(mode="batched", dtype=str(runner.sd.dtype).removeprefix("torch."), gradient_checkpointing=False,
                   compiled=compile_unet, max_abs_diff_vs_reference=max_abs_diff(batch_images, ref_images))
        if row["status"] == "ok" and ref_row["status"] == "ok":
            row["speedup_vs_reference"] = row["images_per_s"] / ref_row["images_per_s"]
        rows.append(row)
        report(format_row(row))
    del runner
    release(device)
    return {"unet_parameters": unet_parameters, "memory_measure": peak_memory(device)[1], "rows": rows,
            "summary": summarize(rows, quick=quick, device=device, resolution=resolution, steps=steps)}


def summarize(rows: Sequence[dict], *, quick: bool, device: torch.device, resolution: int, steps: int) -> dict:
    """The one-line result: both paths' images/s, the best batch size and the speed-up ratio."""
    reference, batched = rows[0], list(rows[1:])
    ok = [r for r in batched if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    ref_ips = reference.get("images_per_s")
    diffs = [r["max_abs_diff_vs_reference"] for r in ok if r.get("max_abs_diff_vs_reference") is not None]
    return {
        "benchmark": "expand_throughput",
        "quick": quick,
        "device": device.type,
        "resolution": resolution,
        "steps": steps,
        "reference_dtype": reference["dtype"],
        "batched_dtype": batched[0]["dtype"] if batched else None,
        "reference_images_per_s": ref_ips,
        "batched_images_per_s": {str(r["batch_size"]): r.get("images_per_s", "OOM") for r in batched},
        "best_batch_size": best["batch_size"] if best else None,
        "speedup": best["images_per_s"] / ref_ips if best and ref_ips else None,
        "max_abs_diff_vs_reference": max(diffs) if diffs else None,
    }


def format_row(row: dict) -> str:
    """A table line for the console."""
    if row["status"] != "ok":
        return f"{row['mode']:<9} batch {row['batch_size']:>3}: {row['status']}"
    extra = ""
    if "speedup_vs_reference" in row:
        extra = f"  speed-up {row['speedup_vs_reference']:.2f}x  max|diff| {row['max_abs_diff_vs_reference']}"
    return (f"{row['mode']:<9} batch {row['batch_size']:>3}: {row['images_per_s']:.4f} images/s, "
            f"{row['s_per_image']:.3f} s/image, peak memory {row['peak_memory_gib']:.2f} GiB{extra}")


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line; unset run settings take the chosen scale's defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if visible, else cpu; "
                                                       "--quick always runs on cpu)")
    parser.add_argument("--precision", default=PRECISION, choices=sorted(PRECISIONS),
                        help="batched path's dtype (default fp16, expand.py's default; fp32 on CPU); the "
                             "reference path is always fp16")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None,
                        help="batched path's batch sizes (default 1 2 4 8 16; --quick: 1 2 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement after one warm-up "
                                                                  "call (default 2)")
    parser.add_argument("--resolution", type=int, default=None, help="image side in px (default 512; --quick: 64)")
    parser.add_argument("--steps", type=int, default=None,
                        help="DDIM steps (default 50; --quick: 10); M keeps the paper's 20/50 of the schedule")
    parser.add_argument("--quick", action="store_true", help="scaled-down model on CPU, under a minute")
    parser.add_argument("--compile", action="store_true", help="torch.compile the batched path's UNet")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own; --quick: 1, see SCALES)")
    parser.add_argument("--output_json", default=None, help="also write all rows and the machine to this file")
    args = parser.parse_args(argv)

    scale = SCALES["quick" if args.quick else "full"]
    if args.quick and args.device not in (None, "cpu"):
        parser.error(f"--quick runs on CPU; drop --device {args.device} or drop --quick.")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible; use --device cpu or --quick.")
    args.batch_sizes = list(args.batch_sizes or scale.batch_sizes)
    args.repeats = scale.repeats if args.repeats is None else args.repeats
    args.resolution = args.resolution or scale.resolution
    args.steps = args.steps or scale.steps
    args.threads = scale.threads if args.threads is None else args.threads
    if min(args.batch_sizes) < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--batch_sizes, --repeats and --threads must be positive integers.")
    multiple = 2 ** (len(scale.vae["block_out_channels"]) - 1) * 2 ** (len(scale.unet["block_out_channels"]) - 1)
    if args.resolution < multiple or args.resolution % multiple:
        parser.error(f"--resolution {args.resolution}: must be a positive multiple of {multiple} (VAE factor x "
                     f"UNet downsampling), e.g. {scale.resolution}.")
    if not schedule_fits(args.steps):
        fewest = next(n for n in range(1, STEPS + 1) if schedule_fits(n))
        parser.error(f"--steps {args.steps}: too few for a guided step (M={guidance_step_for(args.steps)}) with "
                     f"{GUIDANCE_PERIOD} look-ahead steps after the first img2img step; use --steps {fewest} or more.")
    return args


def main(args: argparse.Namespace) -> dict:
    """Run the benchmark, print a table and end with one JSON line (the summary)."""
    logging.basicConfig(level=logging.WARNING)
    # Random-weight fp32 models reach fp16 by to(dtype), which diffusers warns about on every path.
    diffusers.utils.logging.set_verbosity_error()
    scale = SCALES["quick" if args.quick else "full"]
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"expand_throughput: {'quick' if args.quick else 'full'} scale on {device}, {args.resolution} px, "
          f"DDIM {args.steps} steps, strength {STRENGTH}, CFG {GUIDANCE_SCALE}, transform guidance period "
          f"{GUIDANCE_PERIOD}, M {guidance_step_for(args.steps)}, {torch.get_num_threads()} CPU threads", flush=True)
    result = run_benchmark(scale, device=device, precision=args.precision, batch_sizes=args.batch_sizes,
                           repeats=args.repeats, resolution=args.resolution, steps=args.steps,
                           compile_unet=args.compile, report=lambda line: print(line, flush=True))
    result["summary"]["torch_threads"] = torch.get_num_threads()
    print(f"peak memory: {result['memory_measure']}")
    if args.output_json:
        record = {"command": sys.argv, "args": vars(args), "machine": machine_info(device), **result}
        atomic_write_text(args.output_json, json.dumps(record, indent=2))
    print(json.dumps(result["summary"]))
    return result


if __name__ == "__main__":
    main(parse_args())
