"""Rich rendering of results.  Plain data in, tables out; nothing here computes anything."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, Optional

__all__ = ["console", "render_convert", "convert_to_dict", "fmt_rel", "print_json", "short_path"]


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def fmt_rel(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def short_path(path: str, width: int = 28) -> str:
    """The path as given when it fits a table column, else its file name (the user typed it)."""
    import os

    return path if len(path) <= width else os.path.basename(path)


def print_json(data: Dict[str, Any]) -> None:
    import click

    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def convert_to_dict(r) -> Dict[str, Any]:
    d = r.detection
    return {
        "src": r.src, "dst": r.dst, "arch": d.arch.name, "num_classes": d.arch.num_classes,
        "layout_in": d.layout, "layout_out": r.layout_out, "form_in": d.form,
        "form_out": r.form_out, "prefix": d.prefix, "keys_in": r.keys_in, "keys_out": r.keys_out,
        "params_in": r.params_in, "params_out": r.params_out, "size_in": r.size_in,
        "size_out": r.size_out, "passthrough_keys": r.passthrough,
        "check": r.metrics.to_dict() if r.metrics is not None else None, "notes": r.notes,
        "dtype_out": getattr(r, "dtype_out", None),
        "rounding": r.rounding.to_dict() if getattr(r, "rounding", None) is not None else None,
    }


def render_convert(r, title: str = "mobileone convert") -> None:
    from rich.table import Table

    from .commands._common import human_bytes

    d = r.detection
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("", style="bold")
    t.add_column("in")
    t.add_column("out")
    t.add_row("file", short_path(r.src), short_path(r.dst) if r.dst else "(not written)")
    t.add_row("arch", f"{d.arch.name} ({d.arch.num_classes or 'no'} classes)", "")
    t.add_row("layout", d.layout + (f" under {d.prefix!r}" if d.prefix else ""), r.layout_out)
    t.add_row("form", d.form, r.form_out)
    t.add_row("keys", f"{r.keys_in:,}", f"{r.keys_out:,}")
    t.add_row("params", f"{r.params_in:,}", f"{r.params_out:,}")
    t.add_row("size", human_bytes(r.size_in), human_bytes(r.size_out) if r.size_out else "-")
    if r.passthrough:
        t.add_row("other keys", f"{r.passthrough:,}", "copied unchanged")
    rounding = getattr(r, "rounding", None)
    if getattr(r, "dtype_out", None):
        t.add_row("dtype", d.dtype, r.dtype_out)
    if r.metrics is not None:
        m = r.metrics
        t.add_row("check", "train (eval)", "deploy" + (" before rounding" if rounding else ""))
        t.add_row("max abs diff", "", f"{m.max_abs:.3e}")
        t.add_row("max rel diff", "", fmt_rel(m.max_rel) + "  (relative to max |output|)")
    if rounding is not None:
        short = {"float16": "fp16", "bfloat16": "bf16"}.get(rounding.dtype, rounding.dtype)
        t.add_row(f"{short} check", "rounded weights", "computed in float32")
        if rounding.vs_train is not None:
            t.add_row("max rel diff", "vs train", fmt_rel(rounding.vs_train.max_rel))
        t.add_row("max rel diff", "vs unrounded", fmt_rel(rounding.vs_fp32.max_rel)
                  + "  (the rounding)")
    out = console()
    out.print(t)
    for note in r.notes:
        out.print(f"note: {note}")
