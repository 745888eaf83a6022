"""Output of ``mobileone verify CKPT ARTIFACT`` (a check.verify_artifact.ArtifactReport)."""
from __future__ import annotations

from typing import Any, Dict

from .console import console, fmt_rel, line, quiet, safe, shorten_path
from .export import checks_to_list, render_checks, render_weights
from .verdict import finite_json, verdict_to_dict

__all__ = ["artifact_report_to_dict", "render_artifact_report"]


def artifact_report_to_dict(r) -> Dict[str, Any]:
    """Plain data for ``--json``; inf/NaN become null (strict JSON)."""
    return finite_json({
        "passed": r.passed, "summary": r.summary(), "arch": r.arch.name,
        "num_classes": r.arch.num_classes, "checkpoint": r.checkpoint, "artifact": r.artifact,
        "dtype": r.dtype, "rtol": r.rtol,
        "fusion": verdict_to_dict(r.fusion) if r.fusion is not None else None,
        "executed": r.executed, "not_executed": r.not_executed,
        "runtime_checks": checks_to_list(r.checks),
        "weights_check": r.weights.to_dict() if r.weights is not None else None,
        "notes": list(r.notes),
    })


def render_artifact_report(r) -> None:
    from rich.table import Table

    out = console()
    word = "[bold green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
    if quiet():  # the verdict alone, as verify prints it for two checkpoints
        line(out, f"{word}:", r.summary(), whole=True)
        return
    a, c = r.artifact, r.checkpoint
    room = max(20, out.width - 12 - 7)  # what the value column has
    head = Table(title="mobileone verify (artifact)", show_header=False)
    head.add_column("", style="bold", no_wrap=True)
    head.add_column("", overflow="fold")
    head.add_row("checkpoint", f"{safe(shorten_path(c['path'], room))}  "
                               + safe(f"({c['layout']}, {c['form']} form, {c['arch']}, "
                                      f"{c['dtype']})"))
    head.add_row("artifact", f"{safe(shorten_path(a['path'], room))}  "
                             + safe(f"({a['runtime']}, {r.dtype} weights, input "
                                    f"{a['input_shape']})"))
    if r.fusion is not None:
        head.add_row("fusion", f"{'ok' if r.fusion.passed else 'FAIL'}: train vs deploy max rel "
                               f"diff {fmt_rel(r.fusion.decisive.output.max_rel)}")
    out.print(head)
    if r.weights is not None:
        render_weights(out, r.weights, a["runtime"])
    if r.checks:
        render_checks(out, r.checks, runtime=a["runtime"], dtype=r.dtype,
                      channels=r.arch.in_channels, rtol_fixed=r.rtol is not None)
    line(out, f"{word}:", r.summary(), whole=True)
    for note in r.notes:
        line(out, "note:", note)
