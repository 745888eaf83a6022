"""Output of ``convert`` (one file) as a table or as plain data."""
from __future__ import annotations

from typing import Any, Dict

from .console import (
    console,
    fmt_rel,
    human_bytes,
    line,
    quiet,
    render_timings,
    safe,
    shorten_path,
    timings_json,
    verbose,
)
from .verdict import finite_json, metrics_to_dict, verdict_to_dict

__all__ = ["convert_to_dict", "render_convert", "result_line"]

# Health topics that convert's own notes already state (io.sanity.preflight: dead channels of
# running_var 0, mixed float dtypes, NaN/Inf outside the MobileOne): not said twice.
NOTED = ("zero_var", "dtype_mix", "non_finite")


def convert_to_dict(r) -> Dict[str, Any]:
    d = r.detection
    return finite_json({
        "src": r.src, "dst": r.dst, "arch": d.arch.name, "num_classes": d.arch.num_classes,
        "layout_in": d.layout, "layout_out": r.layout_out, "form_in": d.form,
        "form_out": r.form_out, "prefix": d.prefix, "keys_in": r.keys_in, "keys_out": r.keys_out,
        "params_in": r.params_in, "params_out": r.params_out, "size_in": r.size_in,
        "size_out": r.size_out, "passthrough_keys": r.passthrough, "bn_eps": r.eps,
        "check": verdict_to_dict(r.verdict) if r.verdict is not None else None,
        "notes": r.notes, "dtype_out": r.dtype_out,
        "rounding": metrics_to_dict(r.rounding), "health": r.health,
        "equalization": r.equalization.describe() if r.equalization is not None else None,
        **timings_json(r.timings),
    })


def result_line(r) -> str:
    """The one line ``-q`` prints: what was written, and the verdict."""
    where = r.dst if r.dst else "(not written)"
    if r.verdict is not None:
        return f"{where}: {r.verdict.summary()}"
    return f"{where}: {r.form_out} form, {r.layout_out} layout (not checked)"


def _path_rooms(width: int, rows, src: str, dst: str):
    """Characters the two file names may take: the whole width the table has (the other cells
    of each column set its least width), shared so the shorter path stays whole."""
    from rich.text import Text

    label = max(len(row[0]) for row in rows)
    avail = width - label - 10  # 4 borders, 3 x 2 padding
    least_in = max(len(Text.from_markup(row[1]).plain) for row in rows)
    least_out = max(len(Text.from_markup(row[2]).plain) for row in rows)
    want_in, want_out = max(len(src), least_in), max(len(dst), least_out)
    if want_in + want_out <= avail:
        return len(src), len(dst)
    half = avail // 2
    if want_out <= half:
        return max(16, avail - want_out), len(dst)
    if want_in <= half:
        return len(src), max(16, avail - want_in)
    room_in = max(least_in, half)
    return room_in, max(16, avail - room_in)


def render_convert(r, title: str = "mobileone convert") -> None:
    from rich.table import Table

    out = console()
    if quiet():
        line(out, "", result_line(r), whole=True)
        return
    d = r.detection
    v = r.verdict
    rows = [("arch", f"{safe(d.arch.name)} ({d.arch.num_classes or 'no'} classes)", ""),
            ("layout", safe(d.layout) + (f" under {safe(repr(d.prefix))}" if d.prefix else ""),
             safe(r.layout_out)),
            ("form", safe(d.form), safe(r.form_out)),
            ("keys", f"{r.keys_in:,}", f"{r.keys_out:,}"),
            ("params", f"{r.params_in:,}", f"{r.params_out:,}"),
            ("size", human_bytes(r.size_in), human_bytes(r.size_out) if r.size_out else "-")]
    if r.passthrough:
        rows.append(("other keys", f"{r.passthrough:,}", "copied unchanged"))
    if r.dtype_out:
        rows.append(("dtype", safe(d.dtype), safe(r.dtype_out)))
    if v is not None:
        m = v.decisive.output
        rows.append(("check", "train (eval)", f"deploy, {v.deploy_dtype} weights"))
        rows.append(("max rel diff", "", fmt_rel(m.max_rel) + ("  (float64)" if v.fp64 else "")))
    if r.rounding is not None:
        rows.append(("rounding", f"to {r.dtype_out}",
                     f"{fmt_rel(r.rounding.max_rel)} vs unrounded"))
    room_in, room_out = _path_rooms(out.width, rows, r.src, r.dst or "(not written)")
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("in", overflow="fold")
    t.add_column("out", overflow="fold")
    t.add_row("file", safe(shorten_path(r.src, room_in)),
              safe(shorten_path(r.dst, room_out)) if r.dst else "(not written)")
    for row in rows:
        t.add_row(*row)
    out.print(t)
    if v is not None and verbose():
        from .verify import render_blocks

        render_blocks(out, v)
    if r.equalization is not None:
        from .equalize import equalization_lines

        for label, text in equalization_lines(r.equalization.describe()):
            line(out, label, text)
    if v is not None:
        line(out, "check:", v.summary(), whole=True)  # the verdict: one line, grep-able
    for note in r.notes:
        line(out, "note:", note)
    h = r.health
    if h is not None and h["verdict"] != "healthy":
        from .health import verdict_line

        for issue in h["issues"]:
            if issue["topic"] not in NOTED:
                line(out, f"{issue['level']}:", issue["message"])
        line(out, "", f"{verdict_line(h)}: `mobileone inspect {r.src}` tells more (the eps "
                      f"sensitivity, the fp16/bf16 range)")
    render_timings(out, r.timings)
