"""Rich rendering of a :class:`~mobileone_cli.verify.VerifyReport`.  Data in, tables out."""
from __future__ import annotations

from typing import Optional

from .render import console, fmt_rel

__all__ = ["render_verify"]


def _side(d) -> str:
    if d.get("path") is None:
        return f"{d.get('source')}, {d.get('layout')} layout"
    where = f" under {d['prefix']!r}" if d.get("prefix") else ""
    classes = f"{d['num_classes']} classes" if d.get("num_classes") else "no head"
    return (f"{d['path']}  ({d['layout']}{where}, {d['form']} form, {d['arch']}, {classes}, "
            f"{d['dtype']})")


def _inputs(d) -> str:
    shape = "x".join(str(n) for n in d.get("shape", []))
    if d.get("kind") == "images":
        return f"{d.get('files')} image(s) from {d.get('dir')} -> {shape} (ImageNet preprocessing)"
    return f"seeded random {shape} (seed {d.get('seed')})"


def _frac(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_verify(report, all_blocks: bool = False) -> None:
    from rich.table import Table

    out = console()
    tol = f"rtol {report.rtol:g}" + (f", atol {report.atol:g}" if report.atol else "")
    head = Table(title="mobileone verify", show_header=False)
    head.add_column("", style="bold")
    head.add_column("")
    head.add_row("train", _side(report.train))
    head.add_row("deploy", _side(report.deploy))
    head.add_row("inputs", _inputs(report.inputs))
    head.add_row("mode", f"eval (running BN statistics), fp32, {report.device}")
    head.add_row("tolerance", f"{tol}  (relative to max |train output|)")
    out.print(head)

    cols = [("deploy vs train", report.output)]
    if report.train_vs_fp64 is not None:
        cols += [("train fp32 vs fp64", report.train_vs_fp64),
                 ("deploy fp32 vs fp64", report.deploy_vs_fp64)]
    t = Table(title=f"output ({report.compared})", show_header=True, header_style="bold")
    t.add_column("metric", style="bold")
    for name, _ in cols:
        t.add_column(name, justify="right")
    t.add_row("max abs diff", *(f"{m.max_abs:.3e}" for _, m in cols))
    t.add_row("max rel diff", *(fmt_rel(m.max_rel) for _, m in cols))
    t.add_row("min cosine", *(f"{m.cosine:.9f}" for _, m in cols))
    if report.compared == "logits":
        t.add_row("top-1 agreement", *(_frac(m.top1) for _, m in cols))
        t.add_row("top-5 agreement", *(_frac(m.top5) for _, m in cols))
    t.add_row("scale (max |ref|)", *(f"{m.scale:.4g}" for _, m in cols))
    out.print(t)

    s = Table(title="per stage (own = block fed the train model's input)", show_header=True,
              header_style="bold")
    for col, just in (("stage", "left"), ("blocks", "right"), ("rel diff at output", "right"),
                      ("worst block", "left"), ("its own rel diff", "right"), ("", "left")):
        s.add_column(col, justify=just)
    for row in report.stages:
        s.add_row(row.name, str(row.blocks), fmt_rel(row.max_rel), row.worst_block,
                  fmt_rel(row.worst_own_rel), "ok" if row.within else "[bold red]BAD[/]")
    out.print(s)

    if all_blocks:
        b = Table(title="per block", show_header=True, header_style="bold")
        for col in ("block", "rel diff (end to end)", "own rel diff", "min cosine", "scale"):
            b.add_column(col, justify="left" if col == "block" else "right")
        for e in report.blocks:
            b.add_row(e.name, fmt_rel(e.max_rel), fmt_rel(e.own_rel), f"{e.cosine:.9f}",
                      f"{e.scale:.4g}")
        out.print(b)

    # soft_wrap: the verdict stays one line, whatever the terminal width (grep-able in CI logs)
    if report.passed:
        out.print(f"[bold green]PASS[/]: {report.summary()}", soft_wrap=True)
    else:
        out.print(f"[bold red]FAIL[/]: {report.summary()}", soft_wrap=True)
    for note in report.notes:
        out.print(f"note: {note}", soft_wrap=True)
