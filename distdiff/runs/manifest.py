"""The manifest of an expansion: one JSON line per finished image, in one file per shard, read as one.

A lone shard (one plain process) appends to OUT/manifest.jsonl; shard s of n > 1 (a --split job's
accelerate process, see expansion.global_shard) appends to OUT/manifest.<s>-of-<n>.jsonl. Shards
never share a source image, so no two nodes append to one file and the records need no
cross-node lock, which a shared filesystem (NFS, Lustre) may not honour. Readers take
manifest.jsonl and every part beside it as one manifest, so a folder made before the parts
existed, or by several shard layouts in turn, reads the same way.

Every append is flushed to disk and holds a local lock, which only matters when two runs of the
same shard share one machine. A line cut by a crash or a full disk is removed before that
shard's next append or run (its image is then made again, identically: its seed does not depend
on the run).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from filelock import FileLock

from distdiff.errors import UserError
from distdiff.utils.files import atomic_write_text
from distdiff.method.records import RECORD_KEYS

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
PART_GLOB = "manifest.*-of-*.jsonl"  # the per-shard parts beside MANIFEST
# Every manifest line has exactly these keys; D_* and the guided step's measurements are null when
# nothing measured them (older manifests may lack the step's keys altogether).
MANIFEST_KEYS = ("image", "source", "class", "label", "copy", "seed", "params") + tuple(k.value for k in RECORD_KEYS)


class ManifestError(UserError):
    """A manifest line in the middle of the file that is not a record (hand-edited or corrupted)."""


def _manifest_lock(path: Path) -> FileLock:
    return FileLock(str(path.parent / f".{path.name}.lock"))


def _parse_line(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("image"), str) else None


def manifest_part(out_dir: Path, shard: int, num_shards: int) -> Path:
    """The file shard `shard` of `num_shards` appends to: MANIFEST for a lone shard, else its own part."""
    return Path(out_dir) / (MANIFEST if num_shards == 1 else f"manifest.{shard}-of-{num_shards}.jsonl")


def manifest_files(path: Path) -> list[Path]:
    """MANIFEST (if present) and every shard's part beside it: the files read as one manifest."""
    path = Path(path)
    parts = sorted(path.parent.glob(PART_GLOB)) if path.parent.is_dir() else []
    return ([path] if path.is_file() else []) + parts


def read_manifest(path: Path) -> dict[str, dict]:
    """Records by image path of OUT/manifest.jsonl and its shards' parts, read as one manifest.

    A truncated last line of a file (a crash mid-write) is ignored with a warning; an image listed
    twice (two runs of one shard, or two shard layouts) is one record.
    """
    records = {}
    for part in manifest_files(path):
        records.update(_read_file(part))
    return records


def _read_file(path: Path) -> dict[str, dict]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _parse_line(line)
        if record is None:
            if number == len(lines):
                logger.warning("%s: ignoring a truncated last line; its image will be regenerated", path)
                continue
            raise ManifestError(f"{path} line {number} is not a manifest record; fix or delete that line "
                                 f"(the next expand.py run on this folder removes it and remakes its image).")
        records[record["image"]] = record
    return records


def _cut_torn_tail(handle) -> int:
    """Truncate an open (a+b) manifest after its last newline, dropping a crashed writer's partial line; bytes cut."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return 0
    handle.seek(0)
    keep = handle.read().rfind(b"\n") + 1  # rare (only after a crash), so reading it all is fine
    handle.truncate(keep)
    logger.warning("%s: removed a torn last line (%d bytes) left by a crash or a full disk; its image will be "
                   "made again", handle.name, size - keep)
    return size - keep


def repair_manifest(path: Path) -> int:
    """Remove what crashes left in one manifest file (a torn last line, lines that are not records); lines dropped.

    Called on a shard's own file only: another shard's last line may be one its live writer is appending.
    """
    if not path.is_file():
        return 0
    with _manifest_lock(path):
        with open(path, "r+b") as handle:
            torn = _cut_torn_tail(handle) > 0
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
        kept = [line for line in lines if not line.strip() or _parse_line(line) is not None]
        dropped = len(lines) - len(kept)
        if dropped:
            bad = [n for n, line in enumerate(lines, 1) if line.strip() and _parse_line(line) is None]
            logger.warning("%s: dropped %d line(s) that are not manifest records (lines %s); their images will be "
                           "made again", path, dropped, bad[:10])
            atomic_write_text(path, "".join(kept))
        return dropped + torn


class ManifestReader:
    """The set of images a manifest and its parts list, re-read incrementally (other runs append to them)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offsets: dict[Path, int] = {}
        self.found: dict[Path, set[str]] = {}

    def refresh(self) -> set[str]:
        """Images listed so far (complete lines only), over every file of the manifest."""
        for part in manifest_files(self.path):
            self._refresh_file(part)
        return set().union(*self.found.values())

    def _refresh_file(self, path: Path) -> None:
        offset, images = self.offsets.get(path, 0), self.found.setdefault(path, set())
        with open(path, "rb") as handle:
            if handle.seek(0, os.SEEK_END) < offset:  # rewritten by a repair: start over
                offset = 0
                images.clear()
            handle.seek(offset)
            chunk = handle.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self.offsets[path] = offset + len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            record = _parse_line(line)
            if record is not None:
                images.add(record["image"])


def append_manifest(path: Path, records: Sequence[dict]) -> None:
    """Append JSON lines to one shard's file, flushed to disk, under a local lock (two runs of one shard)."""
    if not records:
        return
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with _manifest_lock(path):
        try:
            with open(path, "a+b", buffering=0) as handle:
                _cut_torn_tail(handle)  # a line a crashed writer left open is removed, not continued
                handle.seek(0, os.SEEK_END)
                rest = memoryview(text.encode())
                while rest:  # a raw write may be partial; the next one then raises (ENOSPC, EFBIG)
                    rest = rest[handle.write(rest):]
                os.fsync(handle.fileno())
        except OSError as err:  # a full disk: name the file (a partial line is cut by the next append)
            raise OSError(err.errno, err.strerror, str(path)) from err


def summarize_manifest(path: Path) -> dict[str, float]:
    """Mean of each recorded value (D_*, the guided step's) over the manifest's images that have it, and their number."""
    records = list(read_manifest(path).values())
    summary = {"images": float(len(records))}
    for key in (k.value for k in RECORD_KEYS):
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            summary[key] = float(np.mean(values))
    return summary
