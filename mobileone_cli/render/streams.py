"""stdout and stderr as the command line uses them: whatever they are connected to, writing to
them never crashes the tool, and text never fails to encode.

* A reader that stops reading (``mobileone stats | head -1``) is not a failure of the command:
  the rest of the output is dropped and the command ends with its own exit status (0 when its
  work succeeded, 1 when a verification failed), quietly.
* stdout that cannot take the output (``>/dev/full``, a closed stdout ``>&-``) is an error the
  user must hear about: :class:`OutputLost`, exit 2, once; later writes are dropped.
* A descriptor 0, 1 or 2 that was closed at start is opened on ``/dev/null`` first, so no file
  the tool opens can take its number (a report printed into a checkpoint).
* Characters the stream's encoding cannot represent (``PYTHONIOENCODING=ascii`` and a file
  named ``é.pth``) are written as backslash escapes.
"""
from __future__ import annotations

import errno
import io
import os
import sys
from typing import Any, Optional

from ..errors import BadInput

__all__ = ["OutputLost", "GuardedStream", "guard_standard_streams"]


class OutputLost(BadInput):
    """stdout cannot take the output (full device, closed, an I/O error): exit 2."""


class GuardedStream(io.TextIOBase):
    """A text stream over ``raw`` whose write errors are handled as the module says.

    It has no ``buffer`` attribute, so libraries that write (click, rich) go through it."""

    def __init__(self, raw: Any, name: str, closed_at_start: bool = False,
                 report: bool = True) -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        self._report = report  # stderr: errors cannot be reported anywhere, drop silently
        self._dropping = False
        self._closed_at_start = closed_at_start
        self._lost: Optional[OutputLost] = None

    # what click and rich look at
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._raw, "encoding", "utf-8")

    @property
    def errors(self) -> Optional[str]:  # type: ignore[override]
        return getattr(self._raw, "errors", "backslashreplace")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return not self._dropping and self._raw.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._raw.fileno()

    def drop(self) -> None:
        """Drop every later write, silently (the command was interrupted)."""
        self._dropping = True
        self._lost = None

    def write(self, text: str) -> int:
        if not self._dropping and self._closed_at_start:
            self._fail(OSError(errno.EBADF, "closed"))
        if self._dropping:
            if text:
                self._say_lost()
            return len(text)
        try:
            if isinstance(text, (bytes, bytearray)) and text:  # click's echo of bytes (shell
                self._raw.flush()                             # completion scripts)
                self._raw.buffer.write(text)
                self._raw.buffer.flush()
                return len(text)
            return self._raw.write(text)  # b'' (click's probe for a binary stream) fails here
        except OSError as exc:
            self._fail(exc)
            if text:
                self._say_lost()
            return len(text)

    def flush(self) -> None:
        if self._dropping:
            self._say_lost()
            return
        try:
            self._raw.flush()
        except OSError as exc:
            self._fail(exc)
            self._say_lost()
        except ValueError:  # closed underneath (interpreter exit)
            self._dropping = True

    def _fail(self, exc: OSError) -> None:
        """Drop everything from now on; keep why, to say once (a library's probe that writes
        '' and ignores errors must not swallow it)."""
        self._dropping = True
        _to_devnull(self._raw)
        if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
            return  # the reader left: not an error of the command
        if self._report:
            reason = {errno.ENOSPC: "no space left on device", errno.EBADF: "it is closed"}.get(
                exc.errno, exc.strerror or str(exc))
            self._lost = OutputLost(f"cannot write the output to {self._name} ({reason})")

    def _say_lost(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            raise lost


def _to_devnull(raw: Any) -> None:
    """Point ``raw``'s descriptor at /dev/null, so flushes at exit succeed (and say nothing)."""
    try:
        fd = raw.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _open_closed_descriptors() -> set:
    """Open /dev/null on each of 0, 1, 2 that is closed; the set of those that were."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            got = os.open(os.devnull, os.O_RDWR)
            if got != fd:  # not the lowest free number after all: put it where it belongs
                os.dup2(got, fd)
                os.close(got)
            closed.add(fd)
    return closed


def _text(fd: int, current: Any) -> Any:
    """A text stream on ``fd`` that escapes what it cannot encode."""
    if current is not None and hasattr(current, "reconfigure"):
        try:
            current.reconfigure(errors="backslashreplace")
            return current
        except (ValueError, OSError):
            pass
    encoding = getattr(current, "encoding", None) or "utf-8"
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=encoding,
                            errors="backslashreplace", line_buffering=True)


def guard_standard_streams() -> None:
    """Install the guarded stdout and stderr (the command line; tests capture their own)."""
    if isinstance(sys.stdout, GuardedStream):
        return
    closed = _open_closed_descriptors()
    sys.stdout = GuardedStream(_text(1, None if 1 in closed else sys.stdout), "stdout",
                               closed_at_start=1 in closed)
    sys.stderr = GuardedStream(_text(2, None if 2 in closed else sys.stderr), "stderr",
                               report=False)
