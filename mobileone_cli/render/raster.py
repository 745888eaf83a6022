"""The ``--plot`` picture as a PNG, drawn with Pillow (the ``images`` extra): no external program.

It draws the elements of the tool's own SVG (:mod:`.svg`: ``<rect>``, ``<line>``, ``<text>``
with plain numeric attributes), so the PNG is the same picture at the same size, pixel for SVG
unit.  Text uses Pillow's bundled font (:func:`font`), the same one a test measures with.
"""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Dict, Tuple

__all__ = ["INSTALL_HINT", "available", "font", "svg_to_png", "svg_size"]

INSTALL_HINT = "pip install 'mobileone-cli[images]'  (or the plain package: pip install pillow)"
_NS = "{http://www.w3.org/2000/svg}"
_ANCHORS = {"start": "ls", "middle": "ms", "end": "rs"}  # SVG's x,y is the text's baseline
_fonts: Dict[int, object] = {}


def available() -> bool:
    """Whether Pillow, with the scalable bundled font (Pillow >= 10.1), can be imported."""
    try:
        from PIL import features
    except ImportError:
        return False
    return bool(features.check("freetype2"))


def font(size: int):
    """Pillow's bundled font at ``size`` pixels (one per size, loaded once)."""
    from PIL import ImageFont

    if size not in _fonts:
        _fonts[size] = ImageFont.load_default(size=size)
    return _fonts[size]


def _num(el, name: str, default: float = 0.0) -> float:
    value = el.get(name)
    return default if value is None else float(value)


def _color(value: str) -> str:
    return "white" if value in ("", "none") else value


def svg_size(svg: str) -> Tuple[int, int]:
    """(width, height) of the canvas, in pixels."""
    root = ET.fromstring(svg.encode("utf-8"))
    return int(round(_num(root, "width"))), int(round(_num(root, "height")))


def svg_to_png(svg: str) -> bytes:
    """The PNG bytes of an SVG written by :mod:`.svg` (elements drawn in document order)."""
    from PIL import Image, ImageDraw

    root = ET.fromstring(svg.encode("utf-8"))
    width, height = svg_size(svg)
    base_size = int(_num(root, "font-size", 12))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for el in root.iter():
        tag = el.tag.replace(_NS, "")
        if tag == "rect":
            x, y = _num(el, "x"), _num(el, "y")
            w, h = _num(el, "width"), _num(el, "height")
            if w > 0 and h > 0:
                draw.rectangle([x, y, max(x, x + w - 1), max(y, y + h - 1)],
                               fill=_color(el.get("fill", "")))
        elif tag == "line":
            stroke = el.get("stroke", "black")
            draw.line([_num(el, "x1"), _num(el, "y1"), _num(el, "x2"), _num(el, "y2")],
                      fill=stroke, width=max(1, int(round(_num(el, "stroke-width", 1)))))
        elif tag == "text":
            size = int(_num(el, "font-size", base_size))
            anchor = _ANCHORS.get(el.get("text-anchor", "start"), "ls")
            bold = el.get("font-weight") == "bold"
            draw.text((_num(el, "x"), _num(el, "y")), el.text or "", fill="black",
                      font=font(size), anchor=anchor, stroke_width=1 if bold else 0,
                      stroke_fill="black")
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
