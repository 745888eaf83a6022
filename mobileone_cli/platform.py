"""What this process learns from and does to the machine it runs on: the memory available now
(Linux /proc and cgroups), handing freed heap back (glibc ``malloc_trim``), and the exit of the
console script without the interpreter's teardown.

A config within every bound of :mod:`.rules.limits` can still describe a network of a trillion
parameters; on Linux such a job does not fail with MemoryError but grows until the kernel kills
it.  Jobs that build models compare :func:`mobileone_cli.arch.memory.job_bytes` (arithmetic on
the architecture) with :func:`available_memory` through :func:`check_memory`, and refuse, naming
both numbers, when it cannot fit.  This module never imports torch.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

from .errors import BadInput
from .rules.dtypes import human_bytes

__all__ = ["available_memory", "check_memory", "release_freed_heap", "may_skip_teardown",
           "exit_skipping_teardown"]


def available_memory() -> Optional[int]:
    """Bytes a new allocation can get now: Linux ``MemAvailable``, lowered to what is left
    under the container's memory limit (cgroup v2 or v1) when there is one; None if unknown."""
    have = _meminfo_available()
    left = _cgroup_left()
    if left is not None:
        have = left if have is None else min(have, left)
    return have


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_left() -> Optional[int]:
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit, "r", encoding="ascii") as fh:
                text = fh.read().strip()
            if text == "max" or int(text) >= 1 << 60:  # no limit
                return None
            with open(usage, "r", encoding="ascii") as fh:
                return max(0, int(text) - int(fh.read().strip()))
        except (OSError, ValueError):
            continue
    return None


def check_memory(need: int, what: str, hint: Optional[str] = None) -> None:
    """BadInput naming ``what`` when ``need`` bytes exceed the memory available now."""
    have = available_memory()
    if have is not None and need > have:
        raise BadInput(f"{what} needs about {human_bytes(need)} of memory; this machine has "
                       f"{human_bytes(have)} available", hint=hint)


_TRIM: Any = None  # glibc's malloc_trim, False where the C library has none


def release_freed_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; elsewhere nothing).

    Once glibc's allocation thresholds have risen (they do after the first large tensor is
    freed), memory freed in the middle of the heap stays resident: a fusion that frees each
    block's train tensors as it makes the deploy ones would peak ~10 MB higher on s4 without
    this.  Costs well under a millisecond a call."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = getattr(ctypes.CDLL(None), "malloc_trim", False)
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


def may_skip_teardown(code: object) -> bool:
    """A command that imported torch, with an integer exit code and no thread still working."""
    import threading

    return ((code is None or isinstance(code, int)) and "torch" in sys.modules
            and all(t.daemon or t is threading.main_thread() for t in threading.enumerate()))


def exit_skipping_teardown(code: int) -> None:
    """Exit as the interpreter would, minus its teardown.

    After the work is done and every file is closed, the interpreter frees torch's objects one
    by one: 0.2-0.3 s of every command that imported it, which the OS does at once.  The exit
    handlers still run (temporary folders, worker pools) and the output is flushed first."""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass
    os._exit(code)
