"""Wall time of the named steps of one job (load, detect, fuse, check, write), for ``-v``.

Torch-free and at the bottom of the layers, so every job can record its steps; the renderers
show them (``render.console.render_timings``) and ``--json`` reports them as ``timings_s``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

__all__ = ["Steps", "step"]


class Steps:
    """Seconds per step name, in the order the steps first ran; a step run twice adds up."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@contextmanager
def step(steps: Optional[Steps], name: str) -> Iterator[None]:
    """``steps(name)``, or nothing when no one is timing."""
    if steps is None:
        yield
    else:
        with steps(name):
            yield
