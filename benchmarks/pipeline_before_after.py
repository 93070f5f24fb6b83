"""Expansion speed of this checkout against an earlier commit, side by side in alternating rounds.

    python benchmarks/pipeline_before_after.py --before a76f7a6          # the sampler before the pipeline redesign

Both trees run the same `expand.py` job on the shipped tiny SD (digits, --max_source_images 20,
2 copies, DDIM 50, transform guidance at the paper's settings, energies recorded, 1 CPU thread)
with the same guide, at each --batch_sizes value; rounds alternate which tree goes first, so a
change of machine load hits both. The rate is expand.py's own "images/s" (sampling time, latent
cache warm, model loading excluded); beside it, each job's CPU seconds (user + system, the whole
process, from getrusage), which a busy machine disturbs far less than wall time. The images of the
two trees are compared byte for byte: a speed-up that changed the images would be a different
method. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATE = re.compile(r"in ([\d.]+) s \(([\d.]+) images/s\)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="a76f7a6", help="the earlier commit (git rev)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--sources", type=int, default=20, help="--max_source_images")
    parser.add_argument("--copies", type=int, default=2, help="--num_images_per_prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work_dir", default=None, help="default: a temporary folder")
    return parser.parse_args(argv)


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                               "PYTHONPATH": str(cwd)})
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stderr[-2000:]}")
    return done.stdout


def images_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for png in sorted(out.rglob("*.png")):
        digest.update(str(png.relative_to(out)).encode() + png.read_bytes())
    return digest.hexdigest()[:16]


def child_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def expand(tree: Path, guide: Path, out: Path, cache: Path, args, batch_size: int) -> tuple[float, float]:
    """One expand.py job in `tree`; its images/s and its CPU seconds."""
    start = child_cpu_seconds()
    stdout = run([sys.executable, "expand.py", "-d", "digits", "--guide_checkpoint", str(guide),
                  "--max_source_images", str(args.sources), "--num_images_per_prompt", str(args.copies),
                  "--batch_size", str(batch_size), "--num_threads", str(args.threads), "--output_dir", str(out),
                  "--cache_dir", str(cache), "--no_report"], tree)
    return float(RATE.search(stdout).group(2)), child_cpu_seconds() - start


def main(args) -> list[dict]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="before_after_"))
    before = work / "before"
    if not (before / "expand.py").is_file():
        before.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", args.before], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    trees = {"before": before, "after": REPO}
    guide = work / "guide" / "digits" / "smallcnn_unpretrained_lr0.1" / "seed1" / "model_best.pth.tar"
    if not guide.is_file():  # the guide's accuracy does not matter for speed: one epoch
        run([sys.executable, "train_original.py", "digits", "smallcnn", "0.1", "False", "0", "--epochs", "1",
             "--output_root", str(work / "guide"), "--num_threads", "1"], REPO)
    for name, tree in trees.items():  # warm each tree's latent cache and imports once, untimed
        expand(tree, guide, work / f"warm-{name}", work / f"cache-{name}", args, 1)
    rows = []
    for batch_size in args.batch_sizes:
        rates = {name: [] for name in trees}
        cpu = {name: [] for name in trees}
        digests = set()
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                out = work / f"out-{name}-b{batch_size}-r{r}"
                rate, seconds = expand(trees[name], guide, out, work / f"cache-{name}", args, batch_size)
                rates[name].append(rate)
                cpu[name].append(seconds)
                digests.add(images_digest(out))
        ratios = [a / b for a, b in zip(rates["after"], rates["before"])]
        rows.append({"batch_size": batch_size, "before": rates["before"], "after": rates["after"], "ratios": ratios,
                     "cpu_before": cpu["before"], "cpu_after": cpu["after"], "same_images": len(digests) == 1})
    print(f"\n| batch | images/s before ({args.before}) | images/s after | after / before per round | median | "
          f"CPU s per job before | CPU s per job after | median CPU s before / after | same images |\n"
          f"|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cpu_ratio = statistics.median(b / a for a, b in zip(row["cpu_after"], row["cpu_before"]))
        print(f"| {row['batch_size']} | {', '.join(f'{v:.2f}' for v in row['before'])} | "
              f"{', '.join(f'{v:.2f}' for v in row['after'])} | {', '.join(f'{v:.3f}' for v in row['ratios'])} | "
              f"{statistics.median(row['ratios']):.3f} | {', '.join(f'{v:.1f}' for v in row['cpu_before'])} | "
              f"{', '.join(f'{v:.1f}' for v in row['cpu_after'])} | {cpu_ratio:.3f} | "
              f"{'yes' if row['same_images'] else 'NO'} |")
    return rows


if __name__ == "__main__":
    main(parse_args())
