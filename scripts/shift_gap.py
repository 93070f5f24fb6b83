"""Measure a generator-target gap: is plain img2img further from held-out target images than real train images are?

    python scripts/shift_gap.py digits-shift-blur --guide checkpoint/.../model_best.pth.tar \
        --expanded expanded/digits-shift-blur/sd_5x [more folders] --held_out val --json runs/gap.json

For the yardstick (real train vs held-out) and every expansion (synthetic vs held-out): FID and
KID (mean, std over subsets) in the guide's unit-norm pooled features (distdiff.report.metrics),
label fidelity under the guide and under an independent judge (the pixel RBF-SVM of
distdiff.report.pixel_judge trained on the dataset's pool split, disjoint from train/val/test), and the
mean feature distance of a copy to its source. --vae adds the generator VAE's round-trip error
on the held-out split of the dataset and of the unshifted digits. The expansion report
(scripts/report.py) shows more; this adds the pool-trained judge and the plain-text table the
shifted-digits notes (docs/shift_benchmark.md) are made from.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from distdiff.data.augment import eval_transform
from distdiff.models.classifiers import load_classifier
from distdiff.utils.files import atomic_write_text
from distdiff.report.pixel_judge import JUDGE_PER_CLASS, PixelJudge
from distdiff.data.registry import load_dataset
from distdiff.report.build import load_run
from distdiff.report.metrics import copy_distances, fid_kid, guide_outputs
from distdiff.pipelines.sampling import decode_latents, encode_latent_dist, image_to_tensor, to_unit_range
from distdiff.pipelines.distdiff_img2img import load_stable_diffusion

BATCH_SIZE = 64


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--guide", required=True, help="guide model_best.pth.tar trained on DATASET's train split")
    parser.add_argument("--expanded", nargs="*", default=[], help="expand.py output folders of DATASET")
    parser.add_argument("--held_out", default="val", choices=("val", "test"), help="real images to compare with")
    parser.add_argument("--vae", default=None, help="diffusers model folder: also report its VAE round-trip error")
    parser.add_argument("--json", default=None, help="write all numbers here")
    return parser.parse_args(argv)


def vae_round_trip(model_dir: str, name: str, split: str) -> float:
    """Mean abs error in [0,1] of VAE encode (posterior mean) + decode over a split."""
    sd = load_stable_diffusion(model_dir, precision="fp32")
    dataset = load_dataset(name, split)
    x = torch.stack([image_to_tensor(dataset.load_image(i), resolution=sd.default_resolution)
                     for i in range(len(dataset))])
    mean = encode_latent_dist(sd, x)[:, :sd.latent_channels] * sd.vae.config.scaling_factor
    with torch.no_grad():
        return float((to_unit_range(decode_latents(sd, mean)) - (x / 2 + 0.5)).abs().mean())


def row(name, real, fake, fake_pred, labels, judge_pred, copies=None):
    """One table row: distances of `fake` features to `real`, label fidelity of both judges, copy distance."""
    return {"name": name, **fid_kid(real, fake),
            "fidelity_guide": float((fake_pred == labels).double().mean()),
            "fidelity_judge": float(np.mean(judge_pred == labels.numpy())),
            "copy_to_source": copies["copy_to_source"] if copies else None}


def main(args):
    result = {"dataset": args.dataset, "held_out": args.held_out, "guide": args.guide}
    if args.vae:
        result["vae_round_trip_mae"] = {name: vae_round_trip(args.vae, name, args.held_out)
                                        for name in ("digits", args.dataset)}
        print("VAE round-trip mean abs error in [0,1]:", result["vae_round_trip_mae"])
    model, info = load_classifier(args.guide, "cpu")
    transform = eval_transform(info["image_size"], info["mean"], info["std"])
    train, held, pool = (load_dataset(args.dataset, s) for s in ("train", args.held_out, "pool"))
    judge = PixelJudge(pool, max_per_class=JUDGE_PER_CLASS.get(args.dataset))

    def measure(dataset):
        features, predicted = guide_outputs(model, dataset.with_transform(transform), batch_size=BATCH_SIZE,
                                            device="cpu")
        return features, predicted, torch.tensor(dataset.labels), judge.predict(np.stack([np.asarray(dataset.load_image(i)) for i in range(len(dataset))]))

    held_f, held_p, held_y, held_j = measure(held)
    train_f, train_p, train_y, train_j = measure(train)
    rows = [row(f"real {args.held_out} (judges' accuracy)", held_f, held_f, held_p, held_y, held_j),
            row(f"yardstick: real train vs {args.held_out}", held_f, train_f, train_p, train_y, train_j)]
    for folder in args.expanded:
        run = load_run(Path(folder), train, str(folder))
        synth_f, synth_p, synth_y, synth_j = measure(run.images)
        known = run.sources >= 0
        copies = copy_distances(synth_f[known], run.sources[known], train_f)
        rows.append(row(str(folder), held_f, synth_f, synth_p, synth_y, synth_j, copies))
    result["rows"] = rows
    for r in rows:
        copy = f"{r['copy_to_source']:.3f}" if r["copy_to_source"] is not None else "-"
        print(f"{r['name']:<44} n={r['n_fake']:4d} KID {r['kid_mean'] * 1e3:7.3f}±{r['kid_std'] * 1e3:6.3f} e-3 "
              f"FID {r['fid']:7.4f}  fidelity guide {r['fidelity_guide']:.3f} judge {r['fidelity_judge']:.3f}"
              f"  copy->source {copy}")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(parse_args())
