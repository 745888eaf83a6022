"""Wall time of the named steps of one job (load, detect, fuse, check, write), for ``-v``.

Torch-free and at the bottom of the layers, so every job can record its steps; the renderers
show them (``render.console.render_timings``) and ``--json`` reports them as ``timings_s``.
A step also tells the run's step listener (if one is set, :func:`listening`) when it starts and
ends: the command line draws progress from that (``render.progress``), so a job never depends on
how (or whether) progress is shown.  The listener is a context variable: concurrent or nested
runs each tell their own.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Dict, Iterator, Optional

__all__ = ["Steps", "step", "listening", "listener"]

# (event, name) with event 'start' or 'end'; None: nobody is watching.
Listener = Callable[[str, str], None]
_LISTENER: ContextVar[Optional[Listener]] = ContextVar("mobileone_step_listener", default=None)


@contextmanager
def listening(fn: Optional[Listener]) -> Iterator[None]:
    """``fn`` is told the steps that run inside the block (None: nobody is)."""
    token = _LISTENER.set(fn)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def listener() -> Optional[Listener]:
    return _LISTENER.get()


@contextmanager
def _told(name: str) -> Iterator[None]:
    fn = _LISTENER.get()
    if fn is None:
        yield
        return
    fn("start", name)
    try:
        yield
    finally:
        fn("end", name)


class Steps:
    """Seconds per step name, in the order the steps first ran; a step run twice adds up."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with _told(name):
                yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@contextmanager
def step(steps: Optional[Steps], name: str) -> Iterator[None]:
    """``steps(name)``; when no one is timing, the step is still told to the listener."""
    if steps is None:
        with _told(name):
            yield
    else:
        with steps(name):
            yield
