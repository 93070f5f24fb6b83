"""Quality of a tiny SD: VAE round trip on val, and whether a classifier trained on real images recognises its images.

Examples:
    python scripts/eval_tiny_sd.py --grid runs/tiny_sd_samples.png                  # digits
    python scripts/eval_tiny_sd.py --dataset fashion-mnist --strengths 0.5 0.7 0.9
The model defaults to the dataset's default --model of expand.py. The judge is an RBF-SVM on the
dataset's generator pool (all of it, or --judge_per_class images per class); its own accuracy on
the test split is printed first. VAE: the round-trip error of the val split. txt2img: --per_class
images per class from the class prompt alone. img2img: one expansion of each train-split image at
each --strengths value with its class prompt.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from distdiff.report.pixel_judge import JUDGE_PER_CLASS, PixelJudge, generator_label_fidelity
from distdiff.data.registry import DATASETS, dataset_spec, load_dataset
from distdiff.tiny_sd.model import load_tiny_sd, vae_round_trip_error
from distdiff.tiny_sd.train import images_tensor


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS), help="whose splits to use")
    parser.add_argument("--model_dir", default=None, help="diffusers model folder (default: the dataset's)")
    parser.add_argument("--per_class", type=int, default=20, help="txt2img images per class")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="DDIM steps (paper: 50)")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="CFG scale (paper: 7.5)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5], help="img2img strengths (paper: 0.5)")
    parser.add_argument("--judge_per_class", type=int, default=None,
                        help=f"pool images per class the judge is fit on (default: all; {JUDGE_PER_CLASS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=None, help="optional PNG path: txt2img rows, then source/expansion rows")
    args = parser.parse_args(argv)
    args.model_dir = args.model_dir or dataset_spec(args.dataset).sd_model
    args.judge_per_class = args.judge_per_class or JUDGE_PER_CLASS.get(args.dataset)
    return args


def save_grid(images: list[np.ndarray], path: Path, nrow: int) -> None:
    """Save images [N, H, W, 3] in [0, 1] as one PNG grid, atomically."""
    tensor = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    save_image(tensor, tmp, nrow=nrow, padding=2, pad_value=0.5)
    os.replace(tmp, path)


def main(args):
    if not (Path(args.model_dir) / "model_index.json").is_file():
        sys.exit(f"--model_dir {args.model_dir} has no model_index.json; train one with "
                 f"`python scripts/train_tiny_sd.py --dataset {args.dataset}`.")
    if not all(0.0 < strength <= 1.0 for strength in args.strengths):
        sys.exit(f"--strengths must be in (0, 1], got {args.strengths}.")
    if args.per_class < 1 or args.num_inference_steps < 1:
        sys.exit("--per_class and --num_inference_steps must be >= 1.")
    pool, test, train, val = (load_dataset(args.dataset, split) for split in ("pool", "test", "train", "val"))
    vae = load_tiny_sd(args.model_dir)["vae"]
    error = vae_round_trip_error(vae, images_tensor(val)[0])
    print(f"VAE round trip of the {error['num_images']} val images (posterior mean, [0, 1] pixels): "
          f"MAE {error['mae']:.4f}, RMSE {error['rmse']:.4f}")
    judge = PixelJudge(pool, max_per_class=args.judge_per_class, seed=args.seed)
    test_images = np.stack([np.asarray(test.load_image(i)) for i in range(len(test))])
    test_accuracy = judge.accuracy(test_images, test.labels)
    print(f"judge (RBF-SVM on {judge.num_train} of {len(pool)} pool images): {args.dataset} test accuracy "
          f"{test_accuracy:.4f} on {len(test)} images")
    result = generator_label_fidelity(args.model_dir, judge, pool.classes, pool.prompt_template, per_class=args.per_class,
                            sources=train, strengths=tuple(args.strengths),
                            num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                            seed=args.seed)
    runs = [("txt2img", result["txt2img"], result["txt2img_images"], result["txt2img_labels"])]
    runs += [(f"img2img strength {s}", result["img2img"][s], result["img2img_images"][s], result["img2img_labels"])
             for s in args.strengths]
    for name, fidelity, images, labels in runs:
        predicted, labels = judge.predict(images), np.asarray(labels)
        per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(len(pool.classes))]
        print(f"{name}: label fidelity {fidelity:.4f} on {len(labels)} images; per class "
              + " ".join(f"{c}:{a:.2f}" for c, a in zip(pool.classes, per_class)))
    if args.grid:
        sources = np.stack([np.asarray(train.load_image(i)) for i in range(len(train))]).astype(np.float32) / 255
        order = np.argsort(train.labels, kind="stable")
        expansions = [result["img2img_images"][s][order] for s in args.strengths]
        save_grid([result["txt2img_images"], sources[order], *expansions], Path(args.grid), nrow=args.per_class)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main(parse_args())
