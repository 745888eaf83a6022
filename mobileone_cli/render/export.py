"""Output of ``export``: the artifact, and the runtime check at every shape (or, for a package
that cannot run here, the weights read back)."""
from __future__ import annotations

from typing import Any, Dict, List

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
)

__all__ = ["render_export", "export_to_dict", "checks_to_list", "render_checks"]


def _m(m) -> Any:
    return m.to_dict() if m is not None else None


def checks_to_list(checks) -> List[Dict[str, Any]]:
    return [{"batch": c.batch, "height": c.height, "width": c.width, "passed": c.passed,
             "tolerance": c.tolerance, "metrics": _m(c.metrics),
             "sensitivity": _m(c.sensitivity), "arithmetic": c.arithmetic,
             "reference": c.reference, "metrics_vs_fp32": _m(c.metrics_fp32)}
            for c in checks]


def export_to_dict(r) -> Dict[str, Any]:
    d = r.detection
    checks = checks_to_list(r.checks)
    out = {
        "src": r.src, "dst": r.dst, "target": r.target, "runtime": r.runtime,
        "arch": d.arch.name, "num_classes": d.arch.num_classes,
        "layout_in": d.layout, "form_in": d.form, "fused": r.fused, "exporter": r.exporter,
        "opset": r.opset, "dtype": r.dtype, "input": {"name": r.input_name, "shape": r.input_shape},
        "output": {"name": r.output_name, "shape": r.output_shape}, "size_out": r.size_out,
        "rtol": r.rtol, "fusion_check": _m(r.fusion_metrics), "executed": r.executed,
        "not_executed": r.not_executed, "runtime_checks": checks,
        "weights_check": r.weights.to_dict() if r.weights is not None else None,
        "details": r.details, "notes": r.notes, **timings_json(r.timings),
    }
    if r.target == "onnx":
        out["onnxruntime_checks"] = checks
    return out


def _dims(shape: List[Any]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def render_checks(out, checks, *, runtime: str, dtype: str, channels: int,
                  rtol_fixed: bool) -> None:
    """The per-shape table and the tolerance line (export and verify share it)."""
    from rich.table import Table

    fp16 = dtype == "fp16"
    refs = sorted({"fp32" if ch.reference == "float32" else "float64" for ch in checks})
    ref = (f"our {'/'.join(refs) or 'float64'} deploy model"
           + (" holding its fp16 weights" if fp16 else "") + ", seeded images")
    c = Table(title=f"{runtime} vs {ref}", header_style="bold")
    for col in ("input", "max abs\ndiff", "max rel\ndiff", "bound", "top-1"):
        c.add_column(col, justify="left" if col == "input" else "right", no_wrap=True)
    if fp16:
        c.add_column("vs fp32\nweights", justify="right", no_wrap=True)
    c.add_column("result", no_wrap=True)
    for ch in checks:
        m = ch.metrics
        row = [f"{ch.batch}x{channels}x{ch.height}x{ch.width}", f"{m.max_abs:.3e}",
               fmt_rel(m.max_rel), fmt_rel(ch.tolerance),
               "-" if m.top1 is None else f"{100 * m.top1:.0f}%"]
        if fp16:
            row.append(fmt_rel(ch.metrics_fp32.max_rel) if ch.metrics_fp32 is not None else "-")
        row.append("[green]ok[/]" if ch.passed else "[red]FAIL[/]")
        c.add_row(*row)
    out.print(c)
    if rtol_fixed:
        line(out, "bound:", "the fixed --rtol, relative to max |output|")
    else:
        prec = "fp16" if checks and checks[0].arithmetic == "float16" else "fp32"
        from ..rules.tolerances import EXPORT_RTOL, EXPORT_SENSITIVITY_FACTOR

        line(out, "bound:", f"{EXPORT_RTOL[dtype]:g} + {EXPORT_SENSITIVITY_FACTOR:g}x the effect "
                            f"of {prec} arithmetic on this network (docs/export.md)")
        if "fp32" in refs:
            line(out, "fp32:", f"within {EXPORT_RTOL[dtype]:g} of our fp32 model, which implies "
                               f"the bound (float64 referee elsewhere; docs/export.md)")
    if fp16:
        line(out, "vs fp32 weights:", "against the unrounded deploy model (the whole cost of "
                                      "fp16)")


def render_weights(out, w, runtime: str) -> None:
    state = "[green]ok[/]" if w.passed else "[red]FAIL[/]"
    out.print(f"{runtime} weights read back: {w.compared} tensors equal to the deploy weights "
              f"(max abs diff {w.max_abs:.3g}) {state}", soft_wrap=True)
    for label, items in (("missing", w.missing), ("wrong", w.wrong),
                         ("unexpected", w.unexpected)):
        if items:
            out.print(f"  {label}: {safe(', '.join(items[:5]))}"
                      + (f" (+{len(items) - 5} more)" if len(items) > 5 else ""), soft_wrap=True)


def result_line(r) -> str:
    """``-q``: where the artifact went and what checked it."""
    if not r.executed:
        w = r.weights
        state = "weights read back equal" if w is not None and w.passed else "weights DIFFER"
        return f"{r.dst}: not executed here ({state})"
    worst = max((c.metrics.max_rel for c in r.checks), default=None)
    return (f"{r.dst}: {r.runtime} matches at {len(r.checks)} shape(s), max rel diff "
            f"{fmt_rel(worst)}")


def render_export(r) -> None:
    from rich.table import Table

    d = r.detection
    out = console()
    if quiet():  # the one-line result
        line(out, "", result_line(r), whole=True)
        return
    room = max(20, out.width - 12 - 7)  # what the value column has
    t = Table(title="mobileone export", show_header=False)
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", overflow="fold")
    t.add_row("checkpoint", f"{safe(shorten_path(r.src, room))}  ({safe(d.layout)}, "
                            f"{safe(d.form)} form" + (", fused here)" if r.fused else ")"))
    t.add_row("arch", f"{safe(d.arch.name)} ({d.arch.num_classes or 'no'} classes)")
    how = (f"opset {r.opset}, {r.exporter} exporter, " if r.target == "onnx" else "")
    if r.details.get("deployment_target"):
        how += f"{safe(str(r.details['deployment_target']))}, "
    t.add_row(r.target, f"{safe(shorten_path(r.dst, room))}  ({human_bytes(r.size_out)}, "
                        f"{how}{r.dtype})")
    t.add_row("input", safe(f"{r.input_name} {_dims(r.input_shape)}"))
    t.add_row("output", safe(f"{r.output_name} {_dims(r.output_shape)}"))
    if r.fusion_metrics is not None:
        t.add_row("fusion check", f"train (eval) vs deploy: max rel diff "
                                  f"{fmt_rel(r.fusion_metrics.max_rel)}")
    out.print(t)
    if r.weights is not None:
        render_weights(out, r.weights, r.runtime)
    if r.checks:
        render_checks(out, r.checks, runtime=r.runtime, dtype=r.dtype,
                      channels=d.arch.in_channels, rtol_fixed=r.rtol is not None)
    if not r.executed:
        line(out, f"[bold yellow]{safe(r.not_executed or 'not executed')}[/]",
             "(the weights above are what was checked)")
    for note in r.notes:
        line(out, "note:", note)
    render_timings(out, r.timings)
