"""The full-size path end to end in each precision: SD v1 tables, 512 px, the paper's settings, one guided image.

    python benchmarks/full_size_precision.py                                   # CPU: fp32 and bf16 autocast
    python benchmarks/full_size_precision.py --device cuda --modes fp32 fp16 bf16 bf16-autocast

Each mode runs in its own process (so each peak memory is its own) on the same random-weight SD v1
components (benchmarks/sd_configs.py; nothing is downloaded), the same random ResNet-50 guide and
prototypes, the same source image and seed: DDIM 50 at strength 0.5, CFG 7.5, the paper's transform
guidance (M 20, period 2), energies recorded as expand.py records them. A mode is the models'
dtype (fp32, fp16, bf16: weights cast, as --precision does on a GPU) or fp32 weights under
torch.autocast to bf16 (`bf16-autocast`, the reduced precision a CPU runs). Reported per mode: wall
time and the process's CPU time (all its threads: wall time alone misleads on a shared CPU), peak
memory (CUDA max_memory_allocated, or the process's peak RSS on CPU), whether every energy is
finite, and the image's difference from fp32's (max and mean |diff| per pixel in [0,1]).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from expand_throughput import (GUIDE_ARCH, NUM_CLASSES, SCALES, build_components, guidance_step_for, peak_memory,
                               random_prototypes, source_images, synchronize)

from distdiff.method.guidance import GUIDANCE_PERIOD, GuideEnergy
from distdiff.method.observers import EnergyRecorder
from distdiff.method.transform import TransformGuidance
from distdiff.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, build_classifier
from distdiff.pipelines.distdiff_img2img import DistDiffImg2ImgPipeline, from_components
from distdiff.pipelines.sampling import GUIDANCE_SCALE, PRECISIONS, STRENGTH, encode_prompts, make_generators

MODES = ("fp32", "fp16", "bf16", "bf16-autocast")
SEED = 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16-autocast"], choices=MODES,
                        help="fp32 first: the others are compared with it")
    parser.add_argument("--steps", type=int, default=SCALES["full"].steps)
    parser.add_argument("--resolution", type=int, default=SCALES["full"].resolution)
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="less memory for the guidance backward (expand.py's flag of the same name)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one mode, write this file
    return parser.parse_args(argv)


def build_pipeline(mode: str, device: torch.device, *, gradient_checkpointing: bool) -> DistDiffImg2ImgPipeline:
    """The full-size pipeline with its models in `mode`'s dtype (from_components keeps fp32 on CPU, so cast here)."""
    components = build_components(SCALES["full"], seed=SEED)
    sd = from_components(components, device=device, precision="fp32", gradient_checkpointing=gradient_checkpointing)
    if mode in ("fp16", "bf16"):
        for model in (sd.unet, sd.vae, sd.text_encoder):
            model.to(PRECISIONS[mode])
    return sd


def run_mode(mode: str, args) -> dict:
    """One guided image in `mode`: time, peak memory, energies, the image (saved for the parent to compare)."""
    device = torch.device(args.device)
    torch.manual_seed(SEED)
    sd = build_pipeline(mode, device, gradient_checkpointing=args.gradient_checkpointing)
    model = build_classifier(GUIDE_ARCH, NUM_CLASSES, pretrained=False).to(device)
    guide = GuideEnergy(model, random_prototypes(NUM_CLASSES, model.num_features), image_size=SCALES["full"].guide_size,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD)
    labels = torch.tensor([3])
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16-autocast"
                else contextlib.nullcontext())
    recorder = EnergyRecorder(guide, labels)
    with autocast:
        prompts = encode_prompts(sd, [f"a photo of a class {c}." for c in range(NUM_CLASSES)])
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = sd((source_images(args.resolution, count=1) + 1) / 2, labels=labels,
                 generator=make_generators([SEED]), prompt_embeds=prompts, strength=STRENGTH,
                 num_inference_steps=args.steps, guidance_scale=GUIDANCE_SCALE,
                 guidance=TransformGuidance(guidance_step=guidance_step_for(args.steps), period=GUIDANCE_PERIOD),
                 guide=guide, observers=[recorder])
        synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    memory, measured = peak_memory(device)
    energies = {key.value: values[0] for key, values in out.records.items()}
    return {"mode": mode, "device": str(device), "seconds": seconds, "cpu_seconds": cpu_seconds,
            "peak_memory_gib": memory, "memory_measured_as": measured, "energies": energies,
            "energies_finite": all(math.isfinite(v) for v in energies.values()), "image": out.images[0]}


def main(args) -> list[dict]:
    if args.child:
        row = run_mode(args.modes[0], args)
        torch.save(row, args.child)
        return [row]
    if args.modes[0] != "fp32":
        raise SystemExit("full_size_precision.py: --modes must start with fp32, the reference of the others.")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for mode in args.modes:
            path = Path(work) / f"{mode}.pt"
            subprocess.run([sys.executable, __file__, "--device", args.device, "--modes", mode, "--steps",
                            str(args.steps), "--resolution", str(args.resolution), "--child", str(path),
                            *(["--gradient_checkpointing"] if args.gradient_checkpointing else [])], check=True)
            rows.append(torch.load(path))
    reference = rows[0]["image"]
    print("\n| mode | device | s per image | CPU s per image | peak memory (GiB) | energies finite | D_c final "
          "| max \\|diff\\| vs fp32 | mean \\|diff\\| vs fp32 |\n|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        difference = (row.pop("image") - reference).abs()
        row["max_abs_diff_vs_fp32"], row["mean_abs_diff_vs_fp32"] = difference.max().item(), difference.mean().item()
        print(f"| {row['mode']} | {row['device']} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | "
              f"{row['peak_memory_gib']:.2f} | "
              f"{'yes' if row['energies_finite'] else 'NO'} | {row['energies'].get('D_c_final', float('nan')):.4f} | "
              f"{row['max_abs_diff_vs_fp32']:.4f} | {row['mean_abs_diff_vs_fp32']:.5f} |")
    print(f"\nmemory: {rows[0]['memory_measured_as']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(parse_args())
