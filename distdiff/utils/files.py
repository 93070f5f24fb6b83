"""Atomic file writes: a reader, or a resumed run, never sees a half-written output.

Files get the mode a plain `open` would give them (0o666 less the umask), so a lab's group can
read an expansion or a checkpoint as its umask intends; mkstemp alone would leave them 0600.

A file name has at most NAME_MAX bytes: `name_fits` is that rule, and `fitting_name` gives an
internal file (a cache entry, a claim, a temp file) a hash for a name where its natural one is
too long, keeping every name that fits as it was.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import os
import pickle
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from distdiff.errors import UserError

# errno values that mean the file system refused a write (permissions, a full or read-only disk, a name
# too long): the user's environment to fix, reported in one line rather than as a traceback.
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG,
                                errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})

NAME_MAX = 255  # bytes per file name (one path component) on ext4, xfs, btrfs, tmpfs and most others
HASHED_NAME_CHARS = 32  # hex digits of sha256 (128 bits) that stand in for a name too long to keep
# What atomic_open's temp name adds to its target's name: a leading dot, a dot, mkstemp's 8 random
# characters and ".tmp".
TEMP_NAME_EXTRA = len("." + "." + "x" * 8 + ".tmp")


# What torch.load raises for a truncated, garbage or foreign file.
TORCH_LOAD_ERRORS = (RuntimeError, OSError, EOFError, ValueError, struct.error, pickle.UnpicklingError,
                     zipfile.BadZipFile)


class UnreadableFileError(UserError):
    """A file that torch cannot load (truncated, garbage, not a weights-only PyTorch file)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path} is not a readable PyTorch file ({reason})")
        self.path, self.reason = path, reason


def _load_failure(err: BaseException) -> str:
    # torch's messages run to paragraphs (weights_only advice, miniz notes): keep the cause's first sentence.
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first.split('. ')[0].rstrip('.')[:160]}"


def load_torch_file(path: str | Path) -> Any:
    """torch.load(path) of plain tensors and python values (weights_only), on CPU; UnreadableFileError if it fails."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as err:
        raise UnreadableFileError(path, _load_failure(err)) from err


def current_umask() -> int:
    """The process's umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_environment_error(err: BaseException) -> bool:
    """Whether `err` is the file system refusing (see ENVIRONMENT_ERRNOS), not a bug of ours."""
    return isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS


def describe_os_error(err: OSError) -> str:
    """One line: what failed, on which file, and the fix for the common causes."""
    target = f" {err.filename}" if err.filename else ""
    fixes = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
             errno.EACCES: "choose a folder you can write to", errno.EPERM: "choose a folder you can write to",
             errno.EROFS: "choose a writable folder", errno.ENOTDIR: "a part of that path is a file, not a folder",
             errno.EFBIG: "the file is larger than this system allows (ulimit -f)",
             errno.ENAMETOOLONG: f"the path or a name in it is longer than the file system allows ({NAME_MAX} "
                                 f"bytes per name); use shorter names"}
    fix = fixes.get(err.errno, "check the disk and the path")
    return f"cannot write{target}: {err.strerror or err}; {fix}."


def name_fits(name: str, extra: int = 0) -> bool:
    """Whether file name `name`, plus `extra` bytes a caller adds to it, fits NAME_MAX as the file system encodes it."""
    return len(os.fsencode(name)) + extra <= NAME_MAX


def fitting_name(stem: str, suffix: str = "", *, extra: int = 0) -> str:
    """`stem + suffix` where it fits (with `extra` bytes to spare), else a hash of `stem` + suffix; for internal files.

    A name that fits is kept as it is, so folders made before long names were handled still resume.
    """
    if name_fits(stem + suffix, extra):
        return stem + suffix
    return hashlib.sha256(os.fsencode(stem)).hexdigest()[:HASHED_NAME_CHARS] + suffix


def _temp_prefix(path: Path) -> str:
    """Start of atomic_open's temp names for `path`: `.<name>.`, or `.<hash>.` where a temp name would not fit."""
    return f".{fitting_name(path.name, extra=TEMP_NAME_EXTRA)}."


def temp_pattern(path: Path) -> str:
    """Glob (in path's folder) of the temp files atomic_open makes for `path`; a killed writer leaves one."""
    return f"{glob.escape(_temp_prefix(path))}*.tmp"


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs) -> Iterator[Any]:
    """A handle on a temp file beside `path` that replaces `path` on success and is removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a failed write() names no file: name the one the user would look for
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically.

    Serialised in memory first: torch turns a failed write into a RuntimeError without its errno,
    while a plain write keeps the OSError (ENOSPC, EACCES) that tells the user what to fix.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_open(path) as handle:
        handle.write(buffer.getbuffer())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
