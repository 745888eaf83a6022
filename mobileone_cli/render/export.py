"""Output of ``export``: the artifact, and the runtime check at every shape."""
from __future__ import annotations

from typing import Any, Dict, List

from .console import console, fmt_rel, human_bytes, line, quiet, safe, shorten_path

__all__ = ["render_export", "export_to_dict"]


def _m(m) -> Any:
    return m.to_dict() if m is not None else None


def export_to_dict(r) -> Dict[str, Any]:
    d = r.detection
    return {
        "src": r.src, "dst": r.dst, "arch": d.arch.name, "num_classes": d.arch.num_classes,
        "layout_in": d.layout, "form_in": d.form, "fused": r.fused, "exporter": r.exporter,
        "opset": r.opset, "dtype": r.dtype, "input": {"name": r.input_name, "shape": r.input_shape},
        "output": {"name": r.output_name, "shape": r.output_shape}, "size_out": r.size_out,
        "rtol": r.rtol, "fusion_check": _m(r.fusion_metrics),
        "onnxruntime_checks": [
            {"batch": c.batch, "height": c.height, "width": c.width, "passed": c.passed,
             "tolerance": c.tolerance,
             "metrics": _m(c.metrics), "metrics_vs_fp32": _m(c.metrics_fp32)} for c in r.checks],
        "notes": r.notes,
    }


def _dims(shape: List[Any]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def render_export(r) -> None:
    from rich.markup import escape
    from rich.table import Table

    d = r.detection
    out = console()
    if quiet():  # the one-line result
        worst = max((c.metrics.max_rel for c in r.checks), default=None)
        line(out, "", f"{r.dst}: onnxruntime matches at {len(r.checks)} shape(s), max rel diff "
                      f"{fmt_rel(worst)}", whole=True)
        return
    room = max(20, out.width - 12 - 7)  # what the value column has
    t = Table(title="mobileone export", show_header=False)
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", overflow="fold")
    t.add_row("checkpoint", f"{safe(shorten_path(r.src, room))}  ({d.layout}, {d.form} form"
                            + (", fused here)" if r.fused else ")"))
    t.add_row("arch", f"{d.arch.name} ({d.arch.num_classes or 'no'} classes)")
    t.add_row("onnx", f"{safe(shorten_path(r.dst, room))}  ({human_bytes(r.size_out)}, "
                      f"opset {r.opset}, {r.exporter} exporter, {r.dtype})")
    t.add_row("input", escape(f"{r.input_name} {_dims(r.input_shape)}"))
    t.add_row("output", escape(f"{r.output_name} {_dims(r.output_shape)}"))
    if r.fusion_metrics is not None:
        t.add_row("fusion check", f"train (eval) vs deploy: max rel diff "
                                  f"{fmt_rel(r.fusion_metrics.max_rel)}")
    out.print(t)
    fp16 = r.dtype == "fp16"
    ref = ("our fp32 deploy model holding the same fp16-rounded weights" if fp16
           else "our fp32 deploy model")
    c = Table(title=f"onnxruntime (CPU) against {ref}, seeded images", show_header=True,
              header_style="bold")
    for col in ("input", "max abs diff", "max rel diff", "cosine", "top-1"):
        c.add_column(col, justify="left" if col == "input" else "right")
    if fp16:
        c.add_column("vs fp32 weights", justify="right")
    c.add_column("result")
    for ch in r.checks:
        m = ch.metrics
        row = [f"{ch.batch}x{d.arch.in_channels}x{ch.height}x{ch.width}", f"{m.max_abs:.3e}",
               fmt_rel(m.max_rel), f"{m.cosine:.6f}",
               "-" if m.top1 is None else f"{100 * m.top1:.0f}%"]
        if fp16:
            row.append(fmt_rel(ch.metrics_fp32.max_rel))
        row.append("[green]ok[/]" if ch.passed else "[red]FAIL[/]")
        c.add_row(*row)
    out.print(c)
    tol = r.checks[0].tolerance if r.checks else r.rtol
    line(out, "tolerance:", f"max rel diff <= {tol:g} of max |output|"
         + (" (--rtol)" if r.rtol is not None else ""))
    if fp16:
        line(out, "vs fp32 weights:", "against the unrounded fp32 deploy model (the whole cost "
                                      "of fp16; reported)")
    for note in r.notes:
        line(out, "note:", note)
