"""Atomic file writes: a reader, or a resumed run, never sees a half-written output.

Files get the mode a plain `open` would give them (0o666 less the umask), so a lab's group can
read an expansion or a checkpoint as its umask intends; mkstemp alone would leave them 0600.
"""

from __future__ import annotations

import errno
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

# errno values that mean the file system refused a write (permissions, a full or read-only disk):
# the user's environment to fix, reported in one line rather than as a traceback.
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG,
                                errno.ENOTDIR, errno.EISDIR})


# What torch.load raises for a truncated, garbage or foreign file.
TORCH_LOAD_ERRORS = (RuntimeError, OSError, EOFError, ValueError, struct.error, pickle.UnpicklingError,
                     zipfile.BadZipFile)


class UnreadableFileError(ValueError):
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
             errno.EFBIG: "the file is larger than this system allows (ulimit -f)"}
    fix = fixes.get(err.errno, "check the disk and the path")
    return f"cannot write{target}: {err.strerror or err}; {fix}."


def temp_pattern(path: Path) -> str:
    """Glob (in path's folder) of the temp files atomic_open makes for `path`; a killed writer leaves one."""
    return f".{path.name}.*.tmp"


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs) -> Iterator[Any]:
    """A handle on a temp file beside `path` that replaces `path` on success and is removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
