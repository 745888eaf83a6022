"""Output of ``mobileone verify`` (a jobs.verify.VerifyReport): tables, or plain data."""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..rules.tolerances import SENSITIVITY_FACTOR
from .console import (
    console,
    fmt_rel,
    line,
    quiet,
    render_timings,
    safe,
    shorten_path,
    timings_json,
    verbose,
)
from .verdict import finite_json, verdict_to_dict

__all__ = ["render_verify", "verify_to_dict", "render_blocks", "verify_plot"]


def verify_to_dict(report) -> Dict[str, Any]:
    """Plain data for ``--json``; inf/NaN become null (strict JSON)."""
    v = report.verdict
    stage = v.decisive
    return finite_json({
        **verdict_to_dict(v),
        "arch": report.arch.name, "num_classes": report.arch.num_classes,
        "train": report.train, "deploy": report.deploy, "inputs": report.inputs,
        "device": report.device,
        "stages": [s.to_dict() for s in report.stages],
        "blocks": [dict(b.to_dict(), label=v.label(b.name), bad=b.name in stage.bad_blocks)
                   for b in stage.blocks],
        "profile": [r.to_dict() for r in report.profile()],
        "notes": list(report.notes), **timings_json(report.timings),
    })


def _side(d, room: int = 1000) -> str:
    if d.get("path") is None:
        return f"{d.get('source')}, {d.get('layout')} layout"
    where = f" under {d['prefix']!r}" if d.get("prefix") else ""
    classes = f"{d['num_classes']} classes" if d.get("num_classes") else "no head"
    return (f"{shorten_path(d['path'], room)}  ({d['layout']}{where}, {d['form']} form, "
            f"{d['arch']}, {classes}, {d['dtype']})")


def _inputs(d) -> str:
    shape = "x".join(str(n) for n in d.get("shape", []))
    if d.get("kind") == "images":
        return f"{d.get('files')} image(s) from {d.get('dir')} -> {shape} (ImageNet preprocessing)"
    return f"seeded random {shape} (seed {d.get('seed')})"


def _frac(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_blocks(out, v) -> None:
    """Every block's error (``--all-blocks``, ``-v``): end to end, its own and its bound."""
    from rich.table import Table

    stage = v.decisive
    bad = set(stage.bad_blocks)
    b = Table(title="per block (own: fed the train model's input)", header_style="bold")
    for col in ("block", "end to end", "own", "bound", "min cosine", "scale", ""):
        # A long name (``stages.1.5 (stage2.5)``) wraps at its space; numbers never do.
        b.add_column(col, justify="left" if col in ("block", "") else "right",
                     no_wrap=col != "block", min_width=None if col == "block" else len(col))
    for e in stage.blocks:
        bound = stage.block_bounds.get(e.name)
        b.add_row(safe(v.label(e.name)), fmt_rel(e.max_rel), fmt_rel(e.own_rel),
                  fmt_rel(bound / e.scale) if bound is not None and e.scale > 0 else "-",
                  f"{e.cosine:.6f}", f"{e.scale:.3g}",
                  "[bold red]BAD[/]" if e.name in bad else "ok")
    out.print(b)


def verdict_line(report) -> str:
    word = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    return f"{word}:"


def render_verify(report, all_blocks: bool = False) -> None:
    from rich.table import Table

    from .pictures import error_profile, mark_char

    v = report.verdict
    out = console()
    if quiet():  # the verdict alone: one line, grep-able
        line(out, verdict_line(report), report.summary(), whole=True)
        return
    tol = f"rtol {v.rtol:g}" + (f", atol {v.atol:g}" if v.atol else "")
    if v.adaptive:
        tol += f" + {SENSITIVITY_FACTOR:g}x the measured rounding sensitivity"
    head = Table(title="mobileone verify", show_header=False)
    head.add_column("", style="bold", no_wrap=True)
    head.add_column("", overflow="fold")
    room = max(20, out.width - 9 - 7) - 2
    head.add_row("train", safe(_side(report.train, room)))
    head.add_row("deploy", safe(_side(report.deploy, room)))
    head.add_row("inputs", safe(_inputs(report.inputs)))
    head.add_row("mode", f"eval (running BN statistics), fp32"
                         f"{', float64 referee' if v.fp64 is not None else ''}, {report.device}")
    if report.train.get("bn_eps_from", "default") != "default":
        head.add_row("BN eps", safe(f"{report.train['bn_eps']:g} "
                                    f"(from {report.train['bn_eps_from']})"))
    head.add_row("tolerance", f"{tol} (relative to max |train output|)")
    out.print(head)

    cols = [("fp32", v.fp32.output)]
    if v.fp64 is not None:
        cols.append(("float64", v.fp64.output))
    sens = v.decisive.sensitivity
    t = Table(title=f"output ({v.compared}), deploy vs train", header_style="bold")
    t.add_column("metric", style="bold")
    for name, _ in cols:
        t.add_column(name, justify="right", no_wrap=True)
    t.add_row("max abs diff", *(f"{m.max_abs:.3e}" for _, m in cols))
    t.add_row("max rel diff", *(fmt_rel(m.max_rel) for _, m in cols))
    t.add_row("min cosine", *(f"{m.cosine:.9f}" for _, m in cols))
    if v.compared == "logits":
        t.add_row("top-1 agreement", *(_frac(m.top1) for _, m in cols))
    t.add_row("scale (max |ref|)", *(f"{m.scale:.4g}" for _, m in cols))
    out.print(t)
    if sens is not None and v.amplification is not None:
        line(out, "rounding sensitivity:", f"one unit roundoff of {v.deploy_dtype} on every "
             f"weight moves the output by {fmt_rel(sens.max_rel)} (x{v.amplification:.2g})")

    s = Table(title="per stage (own = block fed the train model's input)", header_style="bold")
    for col, just in (("stage", "left"), ("blocks", "right"), ("at output", "right"),
                      ("worst block", "left"), ("own", "right"), ("", "left")):
        # ``just`` is one of rich's justify names (its Literal type is lost in the tuple).
        s.add_column(col, justify=just, no_wrap=just == "right",  # type: ignore[arg-type]
                     min_width=len(col))
    for row in report.stages:
        s.add_row(safe(row.label or row.name), str(row.blocks), fmt_rel(row.max_rel),
                  safe(row.worst_label or row.worst_block),
                  fmt_rel(row.worst_own_rel), "ok" if row.within else "[bold red]BAD[/]")
    out.print(s)

    line(out, "[bold]error profile[/]", f"(log scale): each stage's block nearest its bound "
         f"(own rel diff), {mark_char(out)} = that bound; last, the output")
    for row in error_profile(out, report.profile()):
        out.print(row, soft_wrap=True)

    if all_blocks or verbose():
        render_blocks(out, v)

    # The verdict stays one line, whatever the terminal width (grep-able in CI logs).
    line(out, verdict_line(report), report.summary(), whole=True)
    for note in report.notes:
        line(out, "note:", note)
    render_timings(out, report.timings)


def verify_plot(report) -> str:
    """The error profile as an SVG document (``--plot``)."""
    from .svg import verify_svg

    train = report.train.get("path") or "train"
    deploy = report.deploy.get("path") or report.deploy.get("source") or "deploy"
    word = "PASS" if report.passed else "FAIL"
    return verify_svg(report.profile(), f"mobileone verify {train} {deploy}: {word}")
