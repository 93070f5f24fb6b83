"""Throughput of expand.py and train_original.py on CPU, alone and beside one competing CPU-bound job.

    python benchmarks/cpu_contention.py                    # digits, tiny SD; about 5 minutes on 2 cores
    python benchmarks/cpu_contention.py --images 6 --epochs 2 --output_json out.json

Each scenario runs the real script in a fresh subprocess (so the OpenMP wait policy is read at
torch's load, as for a user) and reads its own throughput figure: expand.py's "images/s"
(generation only, no model loading) and train_original.py's per-epoch times in log.txt (one
epoch = the SGD steps on digits' 100 training images plus the evaluation on 600 test images).

Scenarios (the competitor is `python -c "while True: pass"`, one busy thread):
- alone-1thread:   --num_threads 1, no competitor (the reference)
- busy-default:    our defaults (OMP_WAIT_POLICY=PASSIVE, one thread per available CPU)
- busy-1thread:    PASSIVE and --num_threads 1 (leaving the competitor its core)
- busy-old:        what the scripts did before: OMP_WAIT_POLICY=ACTIVE (OpenMP's spin-wait), one thread per CPU
Prints a markdown table and one JSON line; ratios are against alone-1thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = {  # name: (competitor?, OMP_WAIT_POLICY or None for the scripts' default, --num_threads or None)
    "alone-1thread": (False, None, 1),
    "busy-default": (True, None, None),
    "busy-1thread": (True, None, 1),
    "busy-old": (True, "ACTIVE", None),
}


def _env(wait_policy: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(REPO)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    return env


def _run(argv: list[str], wait_policy: str | None) -> str:
    result = subprocess.run([sys.executable, *argv], cwd=REPO, env=_env(wait_policy), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def expand_rate(work: Path, guide: Path, images: int, wait_policy: str | None, threads: int | None) -> float:
    """expand.py's own images/s over `images` digits (one copy each)."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="expand-"))
    argv = ["expand.py", "-d", "digits", "--guide_checkpoint", str(guide), "--output_dir", str(out),
            "--cache_dir", str(work / "cache"), "--max_source_images", str(images), "--num_images_per_prompt", "1"]
    text = _run(argv + (["--num_threads", str(threads)] if threads else []), wait_policy)
    return float(re.search(r"\(([\d.]+) images/s\)", text).group(1))


def train_rate(work: Path, epochs: int, wait_policy: str | None, threads: int | None) -> tuple[float, float]:
    """(train steps/s, epochs/s) of train_original.py on digits from its log.txt (epochs after the first)."""
    root = Path(tempfile.mkdtemp(dir=work, prefix="train-"))
    argv = ["train_original.py", "digits", "smallcnn", "0.05", "False", "0", "--epochs", str(epochs),
            "--output_root", str(root)]
    _run(argv + (["--num_threads", str(threads)] if threads else []), wait_policy)
    log = next(root.rglob("log.txt")).read_text()
    times = [float(t) for t in re.findall(r" time ([\d.]+)s", log)][1:] or [math.nan]  # epoch 1 includes warm-up
    steps = math.ceil(100 / 64)  # digits: 100 training images, batch 64 (train_original.py's default)
    per_epoch = sum(times) / len(times)
    return steps / per_epoch, 1.0 / per_epoch


def main(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cpu_contention-"))
    guide_root = work / "guide"
    _run(["train_original.py", "digits", "smallcnn", "0.05", "False", "0", "--epochs", "2", "--num_threads", "1",
          "--output_root", str(guide_root)], None)
    guide = next(guide_root.rglob("model_best.pth.tar"))
    expand_rate(work, guide, 2, None, 1)  # fills the latent cache so every scenario times generation only
    rows = {}
    for name, (busy, policy, threads) in SCENARIOS.items():
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            load = os.getloadavg()[0]
            images_per_s = expand_rate(work, guide, args.images, policy, threads)
            steps_per_s, epochs_per_s = train_rate(work, args.epochs, policy, threads)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
        rows[name] = {"expand_images_per_s": images_per_s, "train_steps_per_s": steps_per_s,
                      "train_epochs_per_s": epochs_per_s, "load_avg_1min_at_start": round(load, 2)}
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
        time.sleep(args.pause)
    base = rows["alone-1thread"]
    print("| scenario | expand images/s | ratio | train steps/s | ratio | 1-min load at start |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['expand_images_per_s']:.3f} | "
              f"{row['expand_images_per_s'] / base['expand_images_per_s']:.2f} | {row['train_steps_per_s']:.3f} | "
              f"{row['train_steps_per_s'] / base['train_steps_per_s']:.2f} | {row['load_avg_1min_at_start']} |")
    result = {"benchmark": "cpu_contention", "cpus": len(os.sched_getaffinity(0)), "images": args.images,
              "epochs": args.epochs, "scenarios": rows}
    print(json.dumps(result))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12, help="source images expanded per scenario (1 copy each)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs per scenario (the first is not timed)")
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between scenarios")
    parser.add_argument("--output_json", default=None, help="also write the result here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
