"""Decoded pixels in flight, bounded across every decoding thread.

Each worker of ``eval`` decodes one image at a time, but an image at the pixel limit
(``MAX_IMAGE_PIXELS``, 64 Mpx) holds hundreds of MB while it is decoded, converted and resized,
and eight workers on such images would hold eight of them at once.  A worker takes
an image's pixels from :data:`DECODE` before decoding and gives them back when its tensor is
made: at most ``MAX_DECODE_PIXELS`` are in flight, whatever ``--workers`` says.  Ordinary
photos (0.1 to 12 Mpx) never wait for each other.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from ..rules.limits import MAX_DECODE_PIXELS

__all__ = ["PixelBudget", "DECODE"]


class PixelBudget:
    """At most ``cap`` pixels held at once; one request larger than ``cap`` runs alone."""

    def __init__(self, cap: int) -> None:
        self.cap = int(cap)
        self.used = 0
        self.peak = 0  # the most ever held at once (tests read it)
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        n = max(0, min(int(pixels), self.cap))
        with self._cond:
            while self.used and self.used + n > self.cap:
                self._cond.wait()
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


DECODE = PixelBudget(MAX_DECODE_PIXELS)
