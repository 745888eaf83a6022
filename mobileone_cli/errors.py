"""Errors the tool reports to a user, each with its documented exit code, and the text rules of
every message: one line, printable.

0 ok; 1 verification failed; 2 bad input or usage; 3 internal error (a bug: please report it);
130 interrupted.  File names, keys and text quoted from files may hold newlines, escape sequences
or other control characters: :func:`printable` shows them escaped, so a message can never forge
a second line or drive the terminal.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["MobileOneError", "BadInput", "VerificationFailed", "EXIT_OK", "EXIT_MISMATCH",
           "EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "printable", "first_line",
           "most_serious", "is_out_of_memory", "one_line", "MAX_MESSAGE", "exit_code_of",
           "EXIT_STATUS", "raised_in_package"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class MobileOneError(Exception):
    """An error with a one-line message for the user and an optional hint."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.facts: dict = {}  # what was learned before the failure (arch, layout, max_rel)
        self.shown = False  # the command's own output already said it (a FAIL verdict line)


class BadInput(MobileOneError):
    """The input (file, option, checkpoint content) cannot be used: exit 2."""

    exit_code = EXIT_BAD_INPUT


class VerificationFailed(MobileOneError):
    """The two models do not compute the same function within tolerance: exit 1."""

    exit_code = EXIT_MISMATCH


# The word a report uses for each exit code (one row of a batch, a JSON "status").
EXIT_STATUS = {EXIT_OK: "ok", EXIT_MISMATCH: "mismatch", EXIT_BAD_INPUT: "bad input",
               EXIT_INTERNAL: "internal error", EXIT_INTERRUPTED: "interrupted"}


def exit_code_of(exc: BaseException) -> int:
    """The exit code of an exception that ends a job: the policy of the whole tool.

    A MobileOneError carries its own; Ctrl-C (and SIGTERM, which the CLI turns into it) is 130;
    a failed allocation is bad input (the input asked for more memory than there is); anything
    else is a bug (3)."""
    if isinstance(exc, MobileOneError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if is_out_of_memory(exc):
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL


def raised_in_package(exc: BaseException) -> bool:
    """The innermost frame of ``exc`` is code of this package (not torch, pickle or zipfile):
    where a reader catches a library's many exception types as 'bad file', an exception our own
    code raised is a bug in the reader, not a property of the file."""
    import os

    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(here + os.sep)


def most_serious(codes) -> int:
    """The exit code of a run of several jobs: internal 3 > mismatch 1 > bad input 2 > ok 0."""
    codes = set(codes)
    return next((c for c in (EXIT_INTERNAL, EXIT_MISMATCH, EXIT_BAD_INPUT) if c in codes), EXIT_OK)


def printable(text: object) -> str:
    """``text`` on one line with every control character shown escaped (``\\n``, ``\\x1b``)."""
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if ch.isprintable():
            out.append(ch)
        else:
            esc = repr(ch)[1:-1]
            out.append(esc if esc != ch else f"\\x{ord(ch):02x}")
    return "".join(out)


MAX_MESSAGE = 2000  # characters of one error line (a message may quote a huge key name)


def one_line(text: object, width: int = MAX_MESSAGE) -> str:
    """:func:`printable` ``text``, cut to ``width`` characters with a count of the rest."""
    s = printable(text)
    if len(s) <= width:
        return s
    keep = max(0, width - len(f"... ({len(s):,} more characters)"))
    return s[:keep] + f"... ({len(s) - keep:,} more characters)"


def first_line(text: str, width: int = 200) -> str:
    """The first non-empty line of ``text`` (an exception message), at most ``width`` chars."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line[:width]


_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator", "out of memory",
                        "Cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """``exc`` is a failed allocation: MemoryError, or torch's allocator refusing (a
    RuntimeError such as "DefaultCPUAllocator: can't allocate memory", or CUDA's
    OutOfMemoryError).  The input asked for too much; it is not a bug."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)[:2000]
    return any(s in text for s in _ALLOCATION_FAILURES)
