"""Wall time of the named steps of one job (load, detect, fuse, check, write), for ``-v``.

Torch-free and at the bottom of the layers, so every job can record its steps; the renderers
show them (``render.console.render_timings``) and ``--json`` reports them as ``timings_s``.
A step also tells the process's step listener (if one is set, :func:`set_listener`) when it
starts and ends: the command line draws progress from that (``render.progress``), so a job
never depends on how (or whether) progress is shown.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

__all__ = ["Steps", "step", "set_listener", "listener"]

# (event, name) with event 'start' or 'end'; None: nobody is watching.
Listener = Callable[[str, str], None]
_listener: List[Optional[Listener]] = [None]


def set_listener(fn: Optional[Listener]) -> Optional[Listener]:
    """Make ``fn`` the step listener of this process; returns the one it replaces."""
    old, _listener[0] = _listener[0], fn
    return old


def listener() -> Optional[Listener]:
    return _listener[0]


@contextmanager
def _told(name: str) -> Iterator[None]:
    fn = _listener[0]
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
