"""Rich tables for ``mobileone stats``.  Plain data in, tables out; nothing here counts anything."""
from __future__ import annotations

from typing import Dict, Optional

from ..arch.counting import CONVENTIONS
from .console import (
    compact,
    console,
    human_bytes,
    line,
    quiet,
    render_timings,
    safe,
    shorten_path,
    timings_json,
)

__all__ = ["render_stats", "stats_to_dict", "CONVENTION_LABELS", "result_line", "stats_plot"]

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
    out.update(timings_json(report.timings))
    return out




def result_line(report) -> str:
    """The one line ``-q`` prints (exact numbers, never wrapped)."""
    s = report.stats
    tr, dp = s.train.total, s.deploy.total
    h, w = s.input_size
    text = (f"{s.arch.name} at {h}x{w}: params {tr.params:,} train, {dp.params:,} deploy; "
            f"MACs {tr.macs:,} train, {dp.macs:,} deploy")
    if report.bench is not None:
        text += f"; speed-up {report.bench.speedup:.2f}x"
    return text


def _parts_table(report, convention: str, fmt, what=("params", "compute")):
    """The per-part table; ``what`` picks the params half, the compute half, or both."""
    from rich.table import Table

    s = report.stats
    label = CONVENTION_LABELS[convention]
    has_file = report.file is not None and "params" in what
    h, w = s.input_size
    arch = s.arch
    title = (f"mobileone stats: {safe(arch.name)}, "
             f"{arch.num_classes if arch.has_head else 'no'} classes, input {h}x{w}")
    t = Table(title=title, header_style="bold")
    t.add_column("part", style="bold", no_wrap=True)
    cols = []
    if "params" in what:
        cols += ["params\ntrain", "params\ndeploy"]
        if has_file:
            cols.append(f"in file\n({report.form})")
        cols.append("change")
    if "compute" in what:
        cols += [f"{label}\ntrain", f"{label}\ndeploy", "change"]
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)

    def row(name: str, ptr: int, pdp: int, ctr: int, cdp: int, pfile: Optional[int],
            style: Optional[str] = None) -> None:
        cells = [name]
        if "params" in what:
            cells += [fmt(ptr), fmt(pdp)]
            if has_file:
                cells.append(fmt(pfile) if pfile is not None else "-")
            cells.append(_pct(ptr - pdp, ptr))
        if "compute" in what:
            cells += [fmt(ctr), fmt(cdp), _pct(ctr - cdp, ctr)]
        t.add_row(*cells, style=style)

    for name in s.train.parts:
        tr, dp = s.train.parts[name], s.deploy.parts[name]
        pfile = report.file.parts.get(name, 0) if has_file else None
        row(name, tr.params, dp.params, s.train.part_value(name, convention),
            s.deploy.part_value(name, convention), pfile)
    t.add_section()
    row("total", s.train.total.params, s.deploy.total.params, s.train.value(convention),
        s.deploy.value(convention), report.file.params if has_file else None, style="bold")
    return t


def _fits(out, table) -> bool:
    """The table's natural width (every cell whole) fits the console."""
    return out.measure(table, options=out.options.update_width(10_000)).maximum <= out.width


def render_stats(report, convention: str = "macs", exact: bool = False) -> None:
    """The tables: exact integers where they fit the width; else, unless ``exact``, compact
    ones (4.83 M); ``exact`` at a narrow width splits params and compute into two tables."""
    from rich.table import Table

    out = console()
    if quiet():
        line(out, "", result_line(report), whole=True)
        return
    s = report.stats
    table = _parts_table(report, convention, _int)
    if _fits(out, table):
        out.print(table)
    elif not exact:
        out.print(_parts_table(report, convention, compact))
        line(out, "", "rounded to fit (k = 1e3, M = 1e6, G = 1e9); every digit: --exact or "
                      "--json")
    else:
        out.print(_parts_table(report, convention, _int, what=("params",)))
        out.print(_parts_table(report, convention, _int, what=("compute",)))
    tr, dp = s.train.total, s.deploy.total
    line(out, "", f"fusion removes {tr.params - dp.params:,} parameters "
                  f"({_pct(tr.params - dp.params, tr.params)}) and {tr.macs - dp.macs:,} MACs "
                  f"({_pct(tr.macs - dp.macs, tr.macs)})")
    line(out, "", f"BatchNorm running statistics (buffers, not parameters): "
                  f"{tr.buffers:,} train, {dp.buffers:,} deploy")
    _render_picture(out, report, convention)

    c = Table(title="totals by convention", header_style="bold")
    c.add_column("convention", style="bold", no_wrap=True)
    c.add_column("train", justify="right", no_wrap=True)
    c.add_column("deploy", justify="right", no_wrap=True)
    c.add_column("what it counts")
    c.add_row("params", f"{tr.params:,}", f"{dp.params:,}", "learnable tensors (not BN "
              "statistics)")
    for name in CONVENTIONS:
        c.add_row(CONVENTION_LABELS[name], f"{s.train.value(name):,}",
                  f"{s.deploy.value(name):,}", _SHORT[name])
    out.print(c)

    if report.file is not None:
        _render_file(out, report)
    if report.bench is not None:
        _render_bench(out, report.bench)
    for note in report.notes:
        line(out, "note:", note)
    render_timings(out, report.timings)


def _int(n: int) -> str:
    return f"{n:,}"


def _render_picture(out, report, convention: str) -> None:
    """Per stage, train vs deploy: what fusion removes, where (params and compute)."""
    from .pictures import EIGHTHS, LIGHT, stage_bars

    names, panels = _panels(report, convention)
    solid, light = ("#", ".") if out.options.ascii_only else (EIGHTHS[8], LIGHT)
    line(out, "[bold]per part[/]", f"(linear scale): {solid} deploy, {light} removed by fusion")
    for row in stage_bars(out, names, panels):
        out.print(row, soft_wrap=True)


def _panels(report, convention: str):
    """(part names, [(title, train values, deploy values)]) of the params and compute bars."""
    s = report.stats
    names = list(s.train.parts)
    return names, [("params", [s.train.parts[n].params for n in names],
                    [s.deploy.parts[n].params for n in names]),
                   (CONVENTION_LABELS[convention],
                    [s.train.part_value(n, convention) for n in names],
                    [s.deploy.part_value(n, convention) for n in names])]


def stats_plot(report, convention: str = "macs") -> str:
    """The per-part bars (and the latency bars of --bench) as an SVG document (``--plot``)."""
    from .svg import stats_svg

    names, panels = _panels(report, convention)
    s = report.stats
    h, w = s.input_size
    latency = ([(name, f.median_ms) for name, f in report.bench.forms.items()]
               if report.bench is not None else None)
    return stats_svg(names, panels, f"mobileone stats: {s.arch.name}, input {h}x{w}",
                     latency=latency)


def _render_file(out, report) -> None:
    from rich.table import Table

    f = report.file
    analytic = report.stats.form(report.form).total.params
    t = Table(title="checkpoint", show_header=False)
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", overflow="fold")
    room = max(20, out.width - 18 - 7) - len(report.file_format) - 3
    t.add_row("file", f"{safe(shorten_path(report.source, room))} ({report.file_format})")
    t.add_row("layout", safe(report.layout) + (f" under {safe(repr(report.prefix))}"
                                                 if report.prefix else ""))
    t.add_row("form", safe(report.form))
    t.add_row("tensors", f"{f.tensors:,} ({human_bytes(f.bytes)} of tensor data)")
    match = "matches" if report.file_matches else "DIFFERS from"
    t.add_row("learnable elements", f"{f.params:,} ({match} the analytic {analytic:,})")
    t.add_row("running statistics", f"{f.buffers:,}")
    if f.other:
        t.add_row("other tensors", f"{f.other:,} elements (not part of the MobileOne)")
    out.print(t)


def _render_bench(out, b) -> None:
    from rich.table import Table

    from .pictures import latency_bars

    torch_rt = b.runtime == "torch"
    where = "PyTorch (eager)" if torch_rt else b.runtime
    # Nine columns of times and sizes whose widths move with the machine: no padding at the
    # table's edges, so a slow run's wider numbers still leave every header whole at 80 columns.
    t = Table(title=f"measured on this CPU in {where}: batch {b.batch}, {b.threads} thread(s)",
              header_style="bold", pad_edge=False)
    t.add_column("form", style="bold", no_wrap=True)
    cols = ["median\nms", "p90\nms", "min\nms", "max\nms"]
    cols += ["peak\ntensors"] if torch_rt else []
    for col in cols + ["peak\nRSS +", "weights"]:
        t.add_column(col, justify="right", no_wrap=True)
    approx = False
    for name, f in b.forms.items():
        approx = approx or f.memory_method != "clear_refs"
        rss = human_bytes(f.peak_delta) + ("" if f.memory_method == "clear_refs" else "*")
        row = [name, f"{f.median_ms:.2f}", f"{f.p90_ms:.2f}", f"{f.min_ms:.2f}",
               f"{f.max_ms:.2f}"] + ([human_bytes(f.peak_tensors)] if torch_rt else [])
        t.add_row(*row, rss, human_bytes(f.weight_bytes))
    out.print(t)
    line(out, "", f"{b.warmup} warm-up + {b.runs} timed runs per form, each form in its own "
                  f"process")
    for row in latency_bars(out, [(name, f.median_ms) for name, f in b.forms.items()]):
        out.print(row, soft_wrap=True)
    ratio = b.memory_ratio
    line(out, "", f"speed-up from fusion: {b.speedup:.2f}x (median latency, train / deploy)")
    if ratio and torch_rt:
        line(out, "", f"peak tensor memory of a forward pass, train / deploy: {ratio:.2f}")
    if torch_rt:
        line(out, "", "peak tensors = op outputs alive at once in one pass (exact, repeatable)")
    else:
        line(out, "", f"each form exported to {b.runtime} first (untimed); timed: the "
                      f"artifact's run, input conversion included")
    line(out, "", "peak RSS + = resident memory the timed passes added (with allocator and "
                  "library scratch)" + ("; * approximate" if approx else ""))
    line(out, "", "weights are random (latency does not depend on their values)")
