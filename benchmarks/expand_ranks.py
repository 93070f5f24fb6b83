"""How expansion scales with ranks, and that killed ranks rerun complete the work exactly once.

Each rank is one `expand.py --split i --total_split R` process on the shipped tiny SD (the digits'
100 training images x 7 copies = 700 images, 32 px, 4 DDIM steps, --guidance none), at most
--parallel of them at once. For the largest R, --kill ranks are killed with SIGKILL once they have
written their first manifest line, the set is checked for the gap, and only those ranks are rerun;
then every image must exist exactly once (PNGs and manifest records over all per-shard files).

    OMP_NUM_THREADS=1 python benchmarks/expand_ranks.py --ranks 1 2 4 16 64 --parallel 2

Prints one row per R: wall time, images/s, the ranks' summed generation time (what expand.py
reports as "in X s") and their summed start-up (process wall minus generation).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distdiff.runs.manifest import MANIFEST, manifest_files, manifest_part  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 16, 64])
    p.add_argument("--parallel", type=int, default=2, help="ranks running at once (the machine's cores)")
    p.add_argument("--copies", type=int, default=7, help="copies per source image (100 digits sources)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--kill", type=int, nargs="*", default=[5, 17, 42], help="ranks killed midway at the largest R")
    p.add_argument("--model", default=str(REPO / "checkpoint" / "tiny-sd-digits"))
    p.add_argument("--work_dir", default=None, help="default: a fresh temp folder")
    p.add_argument("--json", default=None, help="also write the rows here")
    return p.parse_args(argv)


def rank_command(args, out: Path, cache: Path, rank: int, ranks: int) -> list[str]:
    """The expand.py command of one rank."""
    return [sys.executable, str(REPO / "expand.py"), "-d", "digits", "--model", args.model, "--guidance", "none",
            "--no_energy_log", "--no_report", "--steps", str(args.steps), "--num_images_per_prompt",
            str(args.copies), "--batch_size", str(args.batch_size), "--num_threads", "1", "--output_dir", str(out),
            "--cache_dir", str(cache), "--split", str(rank), "--total_split", str(ranks)]


def run_ranks(args, out: Path, cache: Path, ranks: int, todo: list[int], kill: set[int], cwd: Path) -> dict:
    """Run `todo` ranks, --parallel at a time; SIGKILL those in `kill` after their first manifest line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    waiting, running, generation, startup, killed = list(todo), {}, 0.0, 0.0, []
    while waiting or running:
        while waiting and len(running) < args.parallel:
            rank = waiting.pop(0)
            handle = subprocess.Popen(rank_command(args, out, cache, rank, ranks), cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            running[rank] = (handle, time.perf_counter())
        time.sleep(0.05)
        for rank, (handle, began) in list(running.items()):
            part = manifest_part(out, rank, ranks)  # a --split rank is shard `rank` of `ranks`
            if rank in kill and handle.poll() is None and part.is_file() and part.read_text().count("\n") >= 1:
                handle.send_signal(signal.SIGKILL)
                handle.wait()
                killed.append(rank)
                del running[rank]
                continue
            if handle.poll() is None:
                continue
            stdout = handle.stdout.read()
            if handle.returncode != 0:
                raise SystemExit(f"rank {rank} of {ranks} failed (exit {handle.returncode})")
            seconds = float(stdout.split(" images to ")[1].split(" in ")[1].split(" s ")[0])
            generation += seconds
            startup += time.perf_counter() - began - seconds
            del running[rank]
    return {"generation_s": generation, "startup_s": startup, "killed": sorted(killed)}


def census(out: Path) -> dict:
    """Records over every manifest file, distinct images among them, and PNGs on disk."""
    lines = [json.loads(line) for part in manifest_files(out / MANIFEST) for line in part.read_text().splitlines()]
    return {"records": len(lines), "distinct": len({r["image"] for r in lines}), "pngs": len(list(out.rglob("*.png")))}


def main(args: argparse.Namespace) -> list[dict]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="expand_ranks_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    expected = 100 * args.copies
    # Warm the latent cache once, so every R measures generation and start-up, not VAE encoding.
    run_ranks(args, work / "warm", cache, 1, [0], set(), work)
    rows = []
    for ranks in args.ranks:
        out = work / f"ranks{ranks}"
        kill = set(args.kill) if ranks == max(args.ranks) else set()
        begin = time.perf_counter()
        row = {"ranks": ranks, **run_ranks(args, out, cache, ranks, list(range(ranks)), kill, work)}
        row["wall_s"] = time.perf_counter() - begin
        row["images_per_s"] = expected / row["wall_s"]
        if kill:
            row["after_kill"] = census(out)
            begin = time.perf_counter()
            rerun = run_ranks(args, out, cache, ranks, sorted(kill), set(), work)
            row["rerun_wall_s"] = time.perf_counter() - begin
            row["rerun_generation_s"] = rerun["generation_s"]
        row["final"] = census(out)
        ok = row["final"] == {"records": expected, "distinct": expected, "pngs": expected}
        row["exactly_once"] = ok
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not ok:
            raise SystemExit(f"R={ranks}: {row['final']} is not {expected} images exactly once")
    print("\n| ranks | wall s | images/s | generation s (sum) | start-up s (sum) |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['ranks']} | {row['wall_s']:.1f} | {row['images_per_s']:.2f} | {row['generation_s']:.1f} | "
              f"{row['startup_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main(parse_args())
