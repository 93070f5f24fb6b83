"""Label fidelity of the digits tiny SD: does a classifier trained on real digits recognise its images?

Example:
    python scripts/eval_tiny_sd.py --model_dir checkpoint/tiny-sd-digits --grid runs/tiny_sd_samples.png
The judge is an RBF-SVM on the digits generator pool; its own accuracy on the digits test split is
printed first. txt2img: --per_class images per class from the class prompt alone. img2img: one
expansion of each digits train-split image at --strength with its class prompt.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from distdiff.registry import load_dataset
from distdiff.pixel_judge import PixelJudge, label_fidelity


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", default="checkpoint/tiny-sd-digits", help="diffusers model folder")
    parser.add_argument("--per_class", type=int, default=20, help="txt2img images per class")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="DDIM steps (paper: 50)")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="CFG scale (paper: 7.5)")
    parser.add_argument("--strength", type=float, default=0.5, help="img2img strength (paper: 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=None, help="optional PNG path: txt2img rows, then source/expansion rows")
    return parser.parse_args(argv)


def save_grid(images: list[np.ndarray], path: Path, nrow: int) -> None:
    """Save images [N, H, W, 3] in [0, 1] as one PNG grid, atomically."""
    tensor = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    save_image(tensor, tmp, nrow=nrow, padding=2, pad_value=0.5)
    os.replace(tmp, path)


def main(args):
    if not (Path(args.model_dir) / "model_index.json").is_file():
        sys.exit(f"--model_dir {args.model_dir} has no model_index.json; train one with scripts/train_tiny_sd.py.")
    if not 0.0 < args.strength <= 1.0:
        sys.exit(f"--strength must be in (0, 1], got {args.strength}.")
    if args.per_class < 1 or args.num_inference_steps < 1:
        sys.exit("--per_class and --num_inference_steps must be >= 1.")
    pool, test, train = (load_dataset("digits", split) for split in ("pool", "test", "train"))
    judge = PixelJudge(pool)
    test_images = np.stack([np.asarray(test.load_image(i)) for i in range(len(test))])
    test_accuracy = judge.accuracy(test_images, test.labels)
    print(f"judge (RBF-SVM on {len(pool)} pool digits): digits test accuracy {test_accuracy:.4f}")
    result = label_fidelity(args.model_dir, judge, pool.classes, pool.prompt_template, per_class=args.per_class,
                            sources=train, strength=args.strength, num_inference_steps=args.num_inference_steps,
                            guidance_scale=args.guidance_scale, seed=args.seed)
    for mode in ("txt2img", "img2img"):
        predicted = judge.predict(result[f"{mode}_images"])
        labels = np.asarray(result[f"{mode}_labels"])
        per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(len(pool.classes))]
        print(f"{mode}: label fidelity {result[mode]:.4f} on {len(labels)} images; per class "
              + " ".join(f"{c}:{a:.2f}" for c, a in zip(pool.classes, per_class)))
    if args.grid:
        sources = np.stack([np.asarray(train.load_image(i)) for i in range(len(train))]).astype(np.float32) / 255
        order = np.argsort(train.labels, kind="stable")
        save_grid([result["txt2img_images"], sources[order], result["img2img_images"][order]], Path(args.grid),
                  nrow=args.per_class)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main(parse_args())
