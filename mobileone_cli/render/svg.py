"""The pictures of :mod:`.pictures` as an SVG file (``--plot FILE.svg``), written by hand: no
plotting library needed.  Plain data in, SVG text out; the command writes it atomically.

Every bar is a ``<rect>`` whose ``class`` says what it shows (``bar``, ``train``, ``deploy``,
``latency``) and whose ``data-name`` names its row; bounds are ``<line class="bound">``; log
axes have ``<line class="tick">`` + ``<text class="tick">`` per decade.  Geometry only: the
numbers are in ``--json``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape, quoteattr

from .pictures import log_position, log_span

__all__ = ["verify_svg", "stats_svg", "WIDTH"]

WIDTH = 760
LABEL_W = 80  # the row names
TEXT_W = 190  # the numbers right of a bar
ROW_H = 22
BAR_H = 14
TOP = 50
FONT = "font-family='DejaVu Sans Mono, Menlo, Consolas, monospace' font-size='12'"
COLORS = {"ok": "#2e8b57", "bad": "#c0392b", "train": "#c8d6e5", "deploy": "#2e86de",
          "latency": "#2e86de", "bound": "#222222", "axis": "#999999"}


def _text(x: float, y: float, text: str, cls: str = "label", anchor: str = "start",
          extra: str = "") -> str:
    from ..errors import printable

    return (f"<text class={quoteattr(cls)} x='{x:.2f}' y='{y:.2f}' text-anchor='{anchor}'"
            f"{extra}>{escape(printable(text))}</text>")


def _rect(cls: str, name: str, x: float, y: float, w: float, h: float, fill: str) -> str:
    return (f"<rect class={quoteattr(cls)} data-name={quoteattr(name)} x='{x:.3f}' y='{y:.2f}' "
            f"width='{max(0.0, w):.3f}' height='{h:.2f}' fill='{fill}'/>")


CHAR_W = 7.3  # advance of one 12 px monospace character (DejaVu Sans Mono: 0.602 em)


def _wrap(text: str, width: float, char_w: float = CHAR_W) -> List[str]:
    """``text`` in lines that fit ``width`` pixels (a long path stays whole on its line)."""
    import textwrap

    return textwrap.wrap(text, max(20, int((width - 20) // char_w)), break_long_words=False,
                         break_on_hyphens=False) or [""]


def _head(title: str, subtitle: str, width: float) -> Tuple[List[str], float]:
    """The title (bold, 14 px) and the subtitle, wrapped to the canvas: (elements, the y
    where the picture may start)."""
    out, y = [], 20.0
    for row in _wrap(title, width, CHAR_W * 14 / 12):
        out.append(_text(10, y, row, "title", extra=" font-weight='bold' font-size='14'"))
        y += 17
    y += 1
    for row in _wrap(subtitle, width):
        out.append(_text(10, y, row, "subtitle"))
        y += 15
    return out, max(float(TOP), y + 12)


def _document(height: float, title: Optional[str], body: List[str],
              width: float = WIDTH) -> str:
    head = [] if title is None else \
        [_text(10, 20, title, "title", extra=" font-weight='bold' font-size='14'")]
    return "\n".join(
        ["<?xml version='1.0' encoding='UTF-8'?>",
         f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
         f"viewBox='0 0 {width:.0f} {height:.0f}' {FONT}>",
         f"<rect x='0' y='0' width='{width:.0f}' height='{height:.0f}' fill='white'/>"]
        + head + body + ["</svg>", ""])


VERIFY_SUBTITLE = ("own rel diff of the block nearest its bound, per stage; last, the output "
                   "(log scale; black line = bound)")


def verify_svg(rows, title: str, subtitle: str = VERIFY_SUBTITLE) -> str:
    """The error profile (verify, and quant's per-block noise): per row a bar on a log axis,
    its bound as a vertical line."""
    from .console import fmt_rel

    def value(r) -> str:
        return f"{'0' if r.rel == 0 else fmt_rel(r.rel)} {r.block} {'ok' if r.within else 'BAD'}"

    # Room for the longest name and value (``stages.1.5 (stage2.5)``): the canvas widens.
    label_w = max(LABEL_W, 20 + CHAR_W * max((len(r.name) for r in rows), default=0))
    text_w = max(TEXT_W, 16 + CHAR_W * max((len(value(r)) for r in rows), default=0))
    width = max(WIDTH, label_w + 300 + text_w)
    x0, x1 = label_w, width - text_w
    span = log_span([r.rel for r in rows] + [r.bound_rel for r in rows])
    body, top = _head(title, subtitle, width)
    bottom = top + ROW_H * len(rows)
    lo, hi = span
    for d in range(lo, hi + 1):
        x = x0 + (x1 - x0) * (d - lo) / (hi - lo)
        body.append(f"<line class='tick' x1='{x:.3f}' y1='{top - 4}' x2='{x:.3f}' "
                    f"y2='{bottom:.2f}' stroke='{COLORS['axis']}' stroke-width='0.5'/>")
        body.append(_text(x, bottom + 14, f"1e{d}", "tick", "middle"))
    for i, r in enumerate(rows):
        y = top + ROW_H * i
        pos = log_position(r.rel, span) or 0.0
        body.append(_text(10, y + BAR_H - 2, r.name))
        body.append(_rect("bar", r.name, x0, y, (x1 - x0) * pos, BAR_H,
                          COLORS["ok" if r.within else "bad"]))
        mark = log_position(r.bound_rel, span)
        if mark is not None:
            x = x0 + (x1 - x0) * mark
            body.append(f"<line class='bound' data-name={quoteattr(r.name)} x1='{x:.3f}' "
                        f"y1='{y - 3:.2f}' x2='{x:.3f}' y2='{y + BAR_H + 3:.2f}' "
                        f"stroke='{COLORS['bound']}' stroke-width='2'/>")
        body.append(_text(x1 + 8, y + BAR_H - 2, value(r), "value"))
    return _document(bottom + 30, None, body, width)


def _panel(body: List[str], top: float, title: str, names: Sequence[str],
           series: Sequence[Tuple[str, Sequence[float]]], unit_text) -> float:
    """Linear bars of one or two series per row (the first drawn under the second); returns
    the y below the panel."""
    x0, x1 = LABEL_W, WIDTH - TEXT_W
    scale = max([v for _, vals in series for v in vals] + [0]) or 1.0
    body.append(_text(10, top + 12, title, "panel", extra=" font-weight='bold'"))
    top += 20
    body.append(f"<line class='axis' x1='{x0}' y1='{top - 2}' x2='{x0}' "
                f"y2='{top + ROW_H * len(names):.2f}' stroke='{COLORS['axis']}'/>")
    for i, name in enumerate(names):
        y = top + ROW_H * i
        body.append(_text(10, y + BAR_H - 2, name))
        for cls, vals in series:
            body.append(_rect(cls, name, x0, y, (x1 - x0) * vals[i] / scale, BAR_H,
                              COLORS[cls]))
        body.append(_text(x1 + 8, y + BAR_H - 2, unit_text(i), "value"))
    return top + ROW_H * len(names) + 10


def stats_svg(names: Sequence[str], panels, title: str,
              latency: Optional[Sequence[Tuple[str, float]]] = None) -> str:
    """Per part, train (light) and deploy (dark) bars for each panel (title, train values,
    deploy values); then the median latency of each form when measured."""
    from .console import compact

    body = [_text(10, 38, "light = train form, dark = deploy form (linear scale, each panel to "
                          "its largest value)", "subtitle")]
    y: float = TOP
    for ptitle, train, deploy in panels:
        y = _panel(body, y, ptitle, names, [("train", train), ("deploy", deploy)],
                   lambda i, tr=train, dp=deploy: f"{compact(tr[i])} -> {compact(dp[i])}")
    if latency:
        forms = [n for n, _ in latency]
        vals = [v for _, v in latency]
        y = _panel(body, y, "latency, median (ms)", forms, [("latency", vals)],
                   lambda i: f"{vals[i]:.2f} ms")
    return _document(y + 10, title, body)
