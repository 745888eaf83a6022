"""Output of ``mobileone demo`` (a jobs.demo.DemoReport): tables, or plain data."""
from __future__ import annotations

import contextlib
import os
import shlex
from typing import Any, Callable, Dict, Iterator, List, Optional

from .console import console, fmt_rel, line, quiet, safe, verbose
from .convert import convert_to_dict, render_convert
from .convert import result_line as convert_line
from .export import export_to_dict
from .verdict import finite_json

__all__ = ["render_demo", "demo_to_dict", "eval_command", "step_status"]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def eval_command(report) -> str:
    """The `mobileone eval` line that reproduces the held-out numbers from the demo's files."""
    from ..assets.digits import EVAL_OPTIONS

    arts = [e.dst for e in report.exports]
    config = os.path.join(report.folder, f"{report.network}.yaml")
    words = (["mobileone", "eval", report.source, report.pngs, "--config", config]
             + [w for a in [report.convert.dst] + arts for w in ("--deploy", a)]
             + list(EVAL_OPTIONS))
    return " ".join(shlex.quote(w) for w in words)


def demo_to_dict(report) -> Dict[str, Any]:
    return finite_json({
        "folder": report.folder, "synthetic": report.synthetic, "network": report.network,
        "arch": report.arch.name, "files": report.files,
        "convert": convert_to_dict(report.convert),
        "exports": [export_to_dict(e) for e in report.exports],
        "not_installed": [{"extension": ext, "install": hint} for ext, hint in report.missing],
        "heldout_images": report.images,
        "heldout": [dict(vars(r)) for r in report.heldout],
        "training": report.record, "heldout_pngs": report.pngs,
        "eval_command": eval_command(report) if report.pngs else None, "notes": report.notes,
    })


def render_demo(report) -> None:
    from rich.table import Table

    out = console()
    if report.synthetic:
        if not quiet():
            line(out, "", f"synthesized {report.source} (Apple layout, train form, random "
                          f"weights, calibrated BN statistics)")
            render_convert(report.convert, title="mobileone demo")
        line(out, "[bold green]OK[/]:", f"deploy checkpoint matches the train model (max rel "
                                        f"diff {report.convert.metrics.max_rel:.2e})", whole=True)
        return
    rec = report.record or {}
    if not quiet():
        line(out, f"{report.network}:", f"a MobileOne trained on {rec.get('training_images'):,} "
                                        f"UCI handwritten digits (CC BY 4.0), train form, Apple "
                                        f"layout: {report.source}")
        if verbose():
            render_convert(report.convert, title="mobileone demo")
        else:
            line(out, "convert:", convert_line(report.convert))
        if report.exports:
            worst = max((c.metrics.max_rel for e in report.exports for c in e.checks),
                        default=None)
            runs_in = {r.file: r.runs_in for r in report.heldout}
            names = ", ".join(f"{os.path.basename(e.dst)} ({runs_in.get(e.dst, e.runtime)})"
                              for e in report.exports)
            line(out, "export:", f"{names}, each checked in its runtime (max rel diff "
                                 f"{fmt_rel(worst)})")
        for ext, hint in report.missing:
            line(out, "not installed:", f"{ext} ({hint})")
        t = Table(title=f"held-out top-1 ({report.images} digits never seen in training)",
                  header_style="bold")
        for col, just in (("model", "left"), ("runs in", "left"), ("top-1", "right"),
                          ("agrees with train", "right"), ("max rel diff", "right")):
            # ``just`` is one of rich's justify names (its Literal type is lost in the tuple).
            t.add_column(col, justify=just, no_wrap=col != "runs in")  # type: ignore[arg-type]
        for r in report.heldout:
            agree = "-" if r.agreement is None else (
                f"{_pct(r.agreement)}" + ("" if r.disagreeing == 0 else
                                          f" ({r.disagreeing} differ)"))
            if r.agreement is not None and r.reference != "train":
                agree += f" vs {r.reference}"
            t.add_row(safe(r.name), safe(r.runs_in), _pct(r.top1), agree,
                      "-" if r.max_rel is None else fmt_rel(r.max_rel))
        out.print(t)
    worst = min(r.top1 for r in report.heldout)
    kinds = len(report.heldout)
    line(out, "[bold green]OK[/]:", f"deploy checkpoint matches the train model (max rel diff "
                                    f"{report.convert.metrics.max_rel:.2e}); held-out top-1 "
                                    f"{_pct(report.heldout[0].top1)} (train), at least "
                                    f"{_pct(worst)} across {kinds} models", whole=True)
    for note in report.notes:
        line(out, "note:", note)
    if not quiet():
        line(out, "files:", f"{report.folder}{os.sep} ({', '.join(_names(report))})")


def _names(report) -> List[str]:
    names = [os.path.basename(p) for p in report.files]
    if report.pngs:
        names.append(os.path.basename(report.pngs) + os.sep)
    return names


@contextlib.contextmanager
def step_status(enabled: bool = True) -> Iterator[Optional[Callable[[str], None]]]:
    """A callback ``(step)`` naming the running step on stderr, when stderr is a terminal (else
    None: logs stay clean)."""
    err = console(stderr=True)
    if not enabled or not err.is_terminal:
        yield None
        return
    with err.status("mobileone demo") as status:
        yield lambda step: status.update(f"mobileone demo: {step}")
