"""The manifest of an expansion, OUT/manifest.jsonl: one JSON line per finished image.

Several runs and shards append to one manifest, so every append holds a lock and is flushed to
disk. A line cut by a crash or a full disk is removed before the next append or run (its image
is then made again, identically: its seed does not depend on the run).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from filelock import FileLock

from distdiff.files import atomic_write_text
from distdiff.sampling import RECORD_KEYS

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
# Every manifest line has exactly these keys; D_* and the guided step's measurements are null when
# nothing measured them (older manifests may lack the step's keys altogether).
MANIFEST_KEYS = ("image", "source", "class", "label", "copy", "seed", "params") + RECORD_KEYS


class ManifestError(ValueError):
    """A manifest line in the middle of the file that is not a record (hand-edited or corrupted)."""


def _manifest_lock(path: Path) -> FileLock:
    return FileLock(str(path.parent / f".{path.name}.lock"))


def _parse_line(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("image"), str) else None


def read_manifest(path: Path) -> dict[str, dict]:
    """Manifest records by image path; a truncated last line (a crash mid-write) is ignored with a warning."""
    if not path.is_file():
        return {}
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
    """Remove what crashes leave in a manifest (a torn last line, lines that are not records); returns lines dropped."""
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
    """The set of images a manifest lists, re-read incrementally (other runs append to it)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.images = path, 0, set()

    def refresh(self) -> set[str]:
        """Images listed so far (complete lines only)."""
        if not self.path.is_file():
            return self.images
        with open(self.path, "rb") as handle:
            if handle.seek(0, os.SEEK_END) < self.offset:  # rewritten by a repair: start over
                self.offset, self.images = 0, set()
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            record = _parse_line(line)
            if record is not None:
                self.images.add(record["image"])
        return self.images


def append_manifest(path: Path, records: Sequence[dict]) -> None:
    """Append JSON lines under a lock (several shards share one manifest), flushed to disk."""
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
    """Mean of each recorded value (D_*, the guided step's) over the images that have it, and the number of images."""
    records = list(read_manifest(path).values())
    summary = {"images": float(len(records))}
    for key in RECORD_KEYS:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            summary[key] = float(np.mean(values))
    return summary
