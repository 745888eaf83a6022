"""Pictures in the terminal: horizontal bars drawn with block characters, fitted to the width.

* :func:`error_profile` -- ``verify``: per stage, the own error of the block nearest its bound,
  on a log scale, the bound marked; then the output against its bound.
* :func:`stage_bars` -- ``stats``: per stage, train vs deploy (params, MACs), linear scale.
* :func:`latency_bars` -- ``stats --bench``: the median latency of each form.

The geometry (:func:`log_span`, :func:`log_position`) is shared with :mod:`.svg`, so the file
that ``--plot`` writes shows the same bars.  Plain data in, rich ``Text`` lines out.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

__all__ = ["mark_char", "log_span", "log_position", "error_profile", "stage_bars", "latency_bars",
           "EIGHTHS"]

EIGHTHS = " ▏▎▍▌▋▊▉█"  # 0..8 eighths of a character cell
LIGHT = "░"
MARK = "│"
MAX_DECADES = 14  # a log axis spans at most this many decades (smaller values sit at its left)
MAX_PICTURE_WIDTH = 100  # pictures stop growing here: wider bars show nothing more


def _width(out) -> int:
    return min(out.width, MAX_PICTURE_WIDTH)


def _ascii(out) -> bool:
    enc = (getattr(out, "encoding", "") or "").lower()
    return not enc.startswith("utf")


def mark_char(out) -> str:
    """The character that marks a bound on a bar."""
    return "|" if _ascii(out) else MARK


def log_span(values: Sequence[Optional[float]]) -> Tuple[int, int]:
    """Decades (lo, hi) of a log axis that holds every positive finite value, at least 3 wide."""
    logs = [math.log10(v) for v in values if v is not None and 0 < v < math.inf]
    if not logs:
        return -8, -2
    hi = math.ceil(max(logs))
    lo = math.floor(min(logs))
    lo = max(lo, hi - MAX_DECADES)
    if hi - lo < 3:
        lo = hi - 3
    return lo, hi


def log_position(value: Optional[float], span: Tuple[int, int]) -> Optional[float]:
    """Where ``value`` sits on the axis, 0..1 (clamped); None for 0 or no value, 1 for inf."""
    if value is None or value <= 0 or math.isnan(value):
        return None
    if math.isinf(value):
        return 1.0
    lo, hi = span
    return min(1.0, max(0.0, (math.log10(value) - lo) / (hi - lo)))


def _bar(fraction: float, cells: int, ascii_only: bool) -> str:
    """A bar of ``fraction`` x ``cells`` character cells, in eighths of a cell."""
    eighths = int(round(max(0.0, min(1.0, fraction)) * cells * 8))
    if ascii_only:
        return "#" * int(round(eighths / 8))
    full, part = divmod(eighths, 8)
    return EIGHTHS[8] * full + (EIGHTHS[part] if part else "")


def _axis(span: Tuple[int, int], cells: int, indent: int) -> str:
    """Decade labels (1e-08 ...) under their positions, every decade that has room."""
    lo, hi = span
    per = cells / (hi - lo)
    step = max(1, math.ceil(7 / per))
    chars = [" "] * (indent + cells + 6)
    for d in range(lo, hi + 1, step):
        label = f"1e{d:+03d}".replace("+", "")
        at = indent + int(round((d - lo) * per)) - len(label) // 2
        at = max(0, min(at, len(chars) - len(label)))
        if all(c == " " for c in chars[max(0, at - 1):at + len(label) + 1]):
            chars[at:at + len(label)] = label
    return "".join(chars).rstrip()


def error_profile(out, rows) -> List:
    """Lines of the verify picture; ``rows``: jobs.verify.ProfileRow (name, block, rel,
    bound_rel, within)."""
    from rich.text import Text

    from .console import fmt_rel

    ascii_only = _ascii(out)
    name_w = max(len(r.name) for r in rows)
    block_w = max(len(r.block) for r in rows)
    value_w = 8
    cells = max(10, _width(out) - name_w - block_w - value_w - 3 - 5)
    span = log_span([r.rel for r in rows] + [r.bound_rel for r in rows])
    lines = [Text(_axis(span, cells, name_w + 1), style="dim")]
    for r in rows:
        pos = log_position(r.rel, span)
        bar = _bar(pos or 0.0, cells, ascii_only).ljust(cells)
        mark = log_position(r.bound_rel, span)
        text = Text(r.name.ljust(name_w) + " ")
        style = "green" if r.within else "red"
        if mark is not None:
            at = min(cells - 1, int(round(mark * cells)))
            text.append(bar[:at], style=style)
            text.append(mark_char(out), style="bold")
            text.append(bar[at + 1:], style=style)
        else:
            text.append(bar, style=style)
        value = "0" if r.rel == 0 else fmt_rel(r.rel)
        text.append(f" {value:>{value_w}} {r.block.ljust(block_w)} ")
        text.append("ok" if r.within else "BAD", style="green" if r.within else "bold red")
        lines.append(text)
    return lines


def _pair_bar(train: float, deploy: float, scale: float, cells: int, ascii_only: bool) -> str:
    """Deploy solid, and what fusion removes (train beyond deploy) light, on one bar."""
    if scale <= 0:
        return " " * cells
    solid = _bar(deploy / scale, cells, ascii_only)
    total = int(round(min(1.0, train / scale) * cells))
    light = ("." if ascii_only else LIGHT) * max(0, total - len(solid))
    return (solid + light).ljust(cells)[:cells]


def stage_bars(out, names: Sequence[str], panels: Sequence[Tuple[str, Sequence[int],
                                                                 Sequence[int]]]) -> List:
    """Lines of the stats picture: per stage, one bar per panel (title, train values, deploy
    values), each panel scaled to its own largest value."""
    from rich.text import Text

    ascii_only = _ascii(out)
    name_w = max(len(n) for n in names)
    gap = 2
    cells = max(8, (_width(out) - name_w - 1 - gap * (len(panels) - 1)) // len(panels))
    head = " " * (name_w + 1) + (" " * gap).join(t.ljust(cells)[:cells] for t, _, _ in panels)
    lines = [Text(head.rstrip(), style="bold")]
    scales = [max(list(tr) + list(dp) + [0]) for _, tr, dp in panels]
    for i, name in enumerate(names):
        text = Text(name.ljust(name_w) + " ")
        for k, ((_, tr, dp), scale) in enumerate(zip(panels, scales)):
            if k:
                text.append(" " * gap)
            bar = _pair_bar(tr[i], dp[i], scale, cells, ascii_only)
            solid = len(bar.rstrip(" ." + LIGHT))
            text.append(bar[:solid], style="cyan")
            text.append(bar[solid:], style="dim")
        text.rstrip()
        lines.append(text)
    return lines


def latency_bars(out, forms: Sequence[Tuple[str, float]], unit: str = "ms") -> List:
    """Lines of the bench picture: one bar per (form, median latency)."""
    from rich.text import Text

    ascii_only = _ascii(out)
    name_w = max(len(n) for n, _ in forms)
    values = [f"{v:.2f} {unit}" for _, v in forms]
    value_w = max(len(v) for v in values)
    cells = max(10, _width(out) - name_w - value_w - 2)
    scale = max(v for _, v in forms) or 1.0
    lines = []
    for (name, v), shown in zip(forms, values):
        text = Text(name.ljust(name_w) + " ")
        text.append(_bar(v / scale, cells, ascii_only).ljust(cells), style="cyan")
        text.append(" " + shown.rjust(value_w))
        lines.append(text)
    return lines
