"""Rich tables for ``mobileone stats``.  Plain data in, tables out; nothing here counts anything."""
from __future__ import annotations

from typing import Dict, Optional

from ..stats.counting import CONVENTIONS
from .console import console, human_bytes, safe

__all__ = ["render_stats", "stats_to_dict", "CONVENTION_LABELS"]

CONVENTION_LABELS = {"macs": "MACs", "flops": "FLOPs", "mmpretrain": "mmpretrain ops"}
_SHORT = {
    "macs": "conv + linear, head included (paper's 'FLOPs')",
    "flops": "2 x MACs (torch.utils.flop_counter)",
    "mmpretrain": "backbone + pooling, head excluded (fvcore-style)",
}


def _pct(saved: int, base: int) -> str:
    if base == 0:
        return "-"
    if not saved:
        return "0%"
    pct = -100.0 * saved / base
    return f"{pct:+.1f}%" if abs(pct) >= 0.1 else f"{pct:+.2g}%"


def _bytes(n: int) -> str:
    return human_bytes(n)


def stats_to_dict(report) -> Dict[str, object]:
    out: Dict[str, object] = report.stats.to_dict()
    if report.source is not None and report.file is not None:
        f = report.file
        out["checkpoint"] = {
            "path": report.source, "format": report.file_format, "layout": report.layout,
            "form": report.form, "prefix": report.prefix, "tensors": f.tensors,
            "params": f.params, "buffers": f.buffers, "other_elements": f.other,
            "bytes": f.bytes, "params_per_part": f.parts,
            "analytic_params": report.stats.form(report.form).total.params,
            "matches_analytic": report.file_matches,
        }
    if report.bench is not None:
        out["bench"] = report.bench.to_dict()
    out["notes"] = list(report.notes)
    return out




def render_stats(report, convention: str = "macs") -> None:
    from rich.table import Table

    s = report.stats
    label = CONVENTION_LABELS[convention]
    h, w = s.input_size
    arch = s.arch
    title = (f"mobileone stats: {safe(arch.name)}, "
             f"{arch.num_classes if arch.has_head else 'no'} classes, input {h}x{w}")
    t = Table(title=title, header_style="bold")
    t.add_column("part", style="bold")
    t.add_column("params train", justify="right")
    t.add_column("params deploy", justify="right")
    has_file = report.file is not None
    if has_file:
        t.add_column(f"in file ({report.form})", justify="right")
    t.add_column("change", justify="right")
    t.add_column(f"{label} train", justify="right")
    t.add_column(f"{label} deploy", justify="right")
    t.add_column("change", justify="right")

    def row(name: str, ptr: int, pdp: int, ctr: int, cdp: int, pfile: Optional[int],
            style: Optional[str] = None) -> None:
        cells = [name, f"{ptr:,}", f"{pdp:,}"]
        if has_file:
            cells.append(f"{pfile:,}" if pfile is not None else "-")
        cells += [_pct(ptr - pdp, ptr), f"{ctr:,}", f"{cdp:,}", _pct(ctr - cdp, ctr)]
        t.add_row(*cells, style=style)

    for name in s.train.parts:
        tr, dp = s.train.parts[name], s.deploy.parts[name]
        pfile = report.file.parts.get(name, 0) if has_file else None
        row(name, tr.params, dp.params, s.train.part_value(name, convention),
            s.deploy.part_value(name, convention), pfile)
    t.add_section()
    row("total", s.train.total.params, s.deploy.total.params, s.train.value(convention),
        s.deploy.value(convention), report.file.params if has_file else None, style="bold")

    out = console(min_width=110)
    out.print(t)
    tr, dp = s.train.total, s.deploy.total
    out.print(f"fusion removes {tr.params - dp.params:,} parameters "
              f"({_pct(tr.params - dp.params, tr.params)}) and {tr.macs - dp.macs:,} MACs "
              f"({_pct(tr.macs - dp.macs, tr.macs)})")
    out.print(f"BatchNorm running statistics (buffers, not counted as parameters): "
              f"{tr.buffers:,} train, {dp.buffers:,} deploy")

    c = Table(title="totals by convention", header_style="bold")
    c.add_column("convention", style="bold")
    c.add_column("train", justify="right")
    c.add_column("deploy", justify="right")
    c.add_column("what it counts")
    for name in CONVENTIONS:
        c.add_row(CONVENTION_LABELS[name], f"{s.train.value(name):,}",
                  f"{s.deploy.value(name):,}", _SHORT[name])
    out.print(c)

    if has_file:
        _render_file(out, report)
    if report.bench is not None:
        _render_bench(out, report.bench)
    for note in report.notes:
        out.print(f"note: {safe(note)}", soft_wrap=True)


def _render_file(out, report) -> None:
    from rich.table import Table

    f = report.file
    analytic = report.stats.form(report.form).total.params
    t = Table(title="checkpoint", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("file", f"{safe(report.source)} ({report.file_format})")
    t.add_row("layout", safe(report.layout) + (f" under {safe(repr(report.prefix))}"
                                                 if report.prefix else ""))
    t.add_row("form", safe(report.form))
    t.add_row("tensors", f"{f.tensors:,} ({_bytes(f.bytes)} of tensor data)")
    match = "matches" if report.file_matches else "DIFFERS from"
    t.add_row("learnable elements", f"{f.params:,} ({match} the analytic {analytic:,})")
    t.add_row("running statistics", f"{f.buffers:,}")
    if f.other:
        t.add_row("other tensors", f"{f.other:,} elements (not part of the MobileOne)")
    out.print(t)


def _render_bench(out, b) -> None:
    from rich.table import Table

    torch_rt = b.runtime == "torch"
    where = "PyTorch (eager)" if torch_rt else b.runtime
    t = Table(title=(f"measured on this CPU in {where}: batch {b.batch}, {b.threads} thread(s), "
                     f"{b.warmup} warm-up + {b.runs} timed runs, each form in its own process"),
              header_style="bold")
    t.add_column("form", style="bold")
    cols = ["median ms", "p90 ms", "min ms", "max ms"]
    cols += ["peak tensors"] if torch_rt else []
    for col in cols + ["peak RSS +", "weights"]:
        t.add_column(col, justify="right")
    for name, f in b.forms.items():
        rss = _bytes(f.peak_delta) + ("" if f.memory_method == "clear_refs" else " (approx.)")
        row = [name, f"{f.median_ms:.2f}", f"{f.p90_ms:.2f}", f"{f.min_ms:.2f}",
               f"{f.max_ms:.2f}"] + ([_bytes(f.peak_tensors)] if torch_rt else [])
        t.add_row(*row, rss, _bytes(f.weight_bytes))
    out.print(t)
    ratio = b.memory_ratio
    out.print(f"speed-up from fusion: {b.speedup:.2f}x (median latency, train / deploy)")
    if ratio and torch_rt:
        out.print(f"peak tensor memory of a forward pass, train / deploy: {ratio:.2f}")
    if torch_rt:
        out.print("peak tensors = op outputs alive at once in one pass (exact, repeatable)")
    else:
        out.print(f"each form exported to {b.runtime} first (untimed); timed: the artifact's "
                  f"run, input conversion included")
    out.print("peak RSS + = resident memory the timed passes added (with allocator and library "
              "scratch)")
    out.print("weights are random (latency does not depend on their values)")
