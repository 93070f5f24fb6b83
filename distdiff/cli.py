"""What every script shares: CPU threads that survive a busy machine, and one-line errors for user mistakes.

Import this module before anything that imports torch: OpenMP reads OMP_WAIT_POLICY once, when
torch loads it. With the default (active) policy, an idle OpenMP thread spins waiting for the
next parallel region; on a CPU shared with other jobs the spinning threads take the cores the
working ones need, and one competing single-threaded job made expand.py 7.6x slower on 2 cores
(benchmarks/RESULTS.md, "cpu_contention"). Passive waiting sleeps instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the wait policy is set)

from distdiff.errors import UserError  # noqa: E402
from distdiff.utils.files import describe_os_error, is_environment_error  # noqa: E402


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_threads(cpus: int | None = None) -> int:
    """Threads for torch on CPU: one per available CPU.

    Not fewer when the machine is busy: torch's CPU kernels give slightly different floating-point
    results with another thread count, so a default that followed the load would make the same
    command give other numbers at another time. The passive wait policy above is what keeps a
    shared CPU from collapsing (benchmarks/RESULTS.md, "cpu_contention").
    """
    return available_cpus() if cpus is None else cpus


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """--num_threads: torch's CPU threads (default: default_num_threads())."""
    parser.add_argument("--num_threads", type=int, default=None,
                        help="CPU threads for torch (default: one per available CPU; OMP_NUM_THREADS also sets it)")


def configure_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads (explicit OMP_NUM_THREADS wins over the default); returns the count."""
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"--num_threads must be at least 1, got {num_threads}.")
    if num_threads is None:
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        num_threads = int(from_env) if from_env.isdigit() and int(from_env) > 0 else default_num_threads()
    torch.set_num_threads(num_threads)
    return num_threads


def config_from_flags(cls, flags: Mapping[str, Any]):
    """The config dataclass `cls` from a script's flags (`vars(args)`): each field from the flag of its name."""
    return cls(**{f.name: flags[f.name] for f in dataclasses.fields(cls) if f.name in flags})


@contextmanager
def user_errors(prog: str, errors: tuple[type[BaseException], ...] = (UserError,)) -> Iterator[None]:
    """Turn `errors` (user mistakes: UserError) and refused writes (full disk, permissions) into one line, exit 1.

    Anything else is a bug of ours and keeps its full traceback.
    """
    try:
        yield
    except errors as err:
        sys.exit(_exit_line(prog, str(err)))
    except OSError as err:
        if not is_environment_error(err):
            raise
        sys.exit(_exit_line(prog, describe_os_error(err)))


def _exit_line(prog: str, message: str) -> str:
    # SystemExit with a string prints it and exits with status 1; one line, whatever the message held.
    return f"{prog}: error: {' '.join(message.split())}"
