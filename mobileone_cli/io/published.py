"""What a run has published: :func:`recording_writes` collects the paths that
:func:`.write.atomic_write` (and the package writer, and a batch's workers) published, so an
interrupt can say truthfully what was written.  A context variable: concurrent or nested runs
each keep their own list, and a run inside a run is recorded by both.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, List, Optional, Tuple

__all__ = ["recording_writes", "note_published", "published_paths"]

# The open recordings, outermost first.
_WRITTEN: ContextVar[Tuple[List[str], ...]] = ContextVar("mobileone_written", default=())


@contextlib.contextmanager
def recording_writes(into: Optional[List[str]] = None) -> Iterator[List[str]]:
    """The paths published inside the block, in order, appended to ``into`` (default: a new
    list).  The CLI opens one per command; a thread that must answer a signal for the work
    passes its own list."""
    written: List[str] = [] if into is None else into
    token = _WRITTEN.set(_WRITTEN.get() + (written,))
    try:
        yield written
    finally:
        _WRITTEN.reset(token)


def published_paths() -> List[str]:
    """The paths published so far in the innermost :func:`recording_writes` (none outside)."""
    open_ = _WRITTEN.get()
    return list(open_[-1]) if open_ else []


def note_published(path: str) -> None:
    """Record ``path`` as published in every open :func:`recording_writes`."""
    for written in _WRITTEN.get():
        written.append(path)
