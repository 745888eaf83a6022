"""Names cut to fit a column while staying told apart: the part that differs is kept."""
from __future__ import annotations

import os
from typing import List, Sequence

from .console import shorten_middle

__all__ = ["distinct_cut"]


def _common_prefix(texts: Sequence[str]) -> str:
    return os.path.commonprefix(list(texts))


def _common_suffix(texts: Sequence[str]) -> str:
    return _common_prefix([t[::-1] for t in texts])[::-1]


def distinct_cut(texts: Sequence[str], width: int) -> List[str]:
    """Each text cut to ``width`` characters so that different texts stay different: what they
    share at the start goes first (``…``), then the middle of what they share at the end (the
    extension stays), and only then the part that tells them apart (in its middle).  One text
    alone, or texts all equal, are cut in the middle."""
    if len(set(texts)) <= 1 or all(len(t) <= width for t in texts):
        return [shorten_middle(t, width) for t in texts]
    pre = _common_prefix(texts)
    suf = _common_suffix([t[len(pre):] for t in texts])
    return [_cut_one(t, pre, suf, width)[:max(width, 1)] for t in texts]


def _cut_one(text: str, pre: str, suf: str, width: int) -> str:
    if len(text) <= width:
        return text
    mid = text[len(pre):len(text) - len(suf)]
    need = len(mid) + len(suf)
    if need + 1 < width:  # the shared start, cut from its beginning
        return "…" + pre[len(pre) - (width - 1 - need):]
    if need + 1 == width or not pre:
        rest = "…" if pre else ""
    else:
        rest = "…"
    room = width - len(rest) - len(mid)
    if room >= min(len(suf), 5):  # the shared end, cut in its middle
        return rest + mid + shorten_middle(suf, room) if room < len(suf) else rest + mid + suf
    return rest + shorten_middle(mid + suf, width - len(rest))
