"""Output of ``convert`` (one file) as a table or as plain data."""
from __future__ import annotations

from typing import Any, Dict

from .console import (console, fmt_rel, human_bytes, line, quiet, render_timings, safe,
                      shorten_path, timings_json, verbose)
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
        **timings_json(r.timings),
    })


def result_line(r) -> str:
    """The one line ``-q`` prints: what was written, and the verdict."""
    where = r.dst if r.dst else "(not written)"
    if r.verdict is not None:
        return f"{where}: {r.verdict.summary()}"
    return f"{where}: {r.form_out} form, {r.layout_out} layout (not checked)"


def render_convert(r, title: str = "mobileone convert") -> None:
    from rich.table import Table

    out = console()
    if quiet():
        line(out, "", result_line(r), whole=True)
        return
    d = r.detection
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("in", overflow="fold")
    t.add_column("out", overflow="fold")
    room = max(16, (out.width - 12 - 10) // 2)  # the label column, 3 columns' borders
    t.add_row("file", safe(shorten_path(r.src, room)),
              safe(shorten_path(r.dst, room)) if r.dst else "(not written)")
    t.add_row("arch", f"{safe(d.arch.name)} ({d.arch.num_classes or 'no'} classes)", "")
    t.add_row("layout", d.layout + (f" under {safe(repr(d.prefix))}" if d.prefix else ""),
              r.layout_out)
    t.add_row("form", d.form, r.form_out)
    t.add_row("keys", f"{r.keys_in:,}", f"{r.keys_out:,}")
    t.add_row("params", f"{r.params_in:,}", f"{r.params_out:,}")
    t.add_row("size", human_bytes(r.size_in), human_bytes(r.size_out) if r.size_out else "-")
    if r.passthrough:
        t.add_row("other keys", f"{r.passthrough:,}", "copied unchanged")
    if r.dtype_out:
        t.add_row("dtype", d.dtype, r.dtype_out)
    v = r.verdict
    if v is not None:
        m = v.decisive.output
        t.add_row("check", "train (eval)", f"deploy, {v.deploy_dtype} weights")
        t.add_row("max rel diff", "", fmt_rel(m.max_rel) + ("  (float64)" if v.fp64 else ""))
    if r.rounding is not None:
        t.add_row("rounding", f"to {r.dtype_out}", f"{fmt_rel(r.rounding.max_rel)} vs unrounded")
    out.print(t)
    if v is not None and verbose():
        from .verify import render_blocks

        render_blocks(out, v)
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
