"""Output of batch ``convert`` (several files): one row per file, the exit code of the run."""
from __future__ import annotations

from typing import Any, Dict

from .console import console, fmt_rel, fmt_seconds, line, quiet, safe, verbose
from .convert import convert_to_dict
from .shorten import distinct_cut

__all__ = ["render_batch", "batch_to_dict"]


def batch_to_dict(items) -> Dict[str, Any]:
    from ..errors import most_serious

    return {
        "exit_code": most_serious(it.exit_code for it in items),
        "converted": sum(it.status == "ok" for it in items), "failed":
            sum(it.status != "ok" for it in items),
        "files": [{"src": it.src, "dst": it.dst, "status": it.status, "exit_code": it.exit_code,
                   "message": it.message, "arch": it.arch, "layout": it.layout,
                   "facts": it.facts,
                   "max_rel": it.max_rel, "rounded_max_rel": it.rounded_rel,
                   "summary": convert_to_dict(it.result) if it.result is not None else None}
                  for it in items],
    }


def render_batch(items) -> None:
    import os

    from rich.table import Table

    out = console()
    if quiet():
        _summary(out, items)
        return
    timed = verbose() and any(it.result is not None and it.result.timings for it in items)
    rounded = [it.result.dtype_out for it in items
               if it.result is not None and it.rounded_rel is not None]
    layouts = {it.layout for it in items if it.layout}
    one_layout = len(layouts) <= 1
    cols = ["file", "output", "arch"] + ([] if one_layout else ["layout"]) + \
        ["result", "max rel diff"]
    if rounded:
        cols.append(f"{rounded[0]} cost")
    if timed:
        cols.append("time")
    title = "mobileone convert (batch)" + (f": {next(iter(layouts))}" if layouts and one_layout
                                           else "")
    t = Table(title=title, header_style="bold")
    for col in cols:
        t.add_column(col, justify="right" if col.endswith(("diff", "cost", "time")) else "left",
                     no_wrap=True)
    style = {"ok": "green", "skipped": "dim", "mismatch": "red", "bad input": "yellow",
             "internal error": "red"}
    rows = []
    for it in items:
        rest = [it.arch or "-"] + ([] if one_layout else [it.layout or "-"]) + \
            [it.status, fmt_rel(it.max_rel)] + ([fmt_rel(it.rounded_rel)] if rounded else [])
        if timed:
            rest.append(fmt_seconds(sum(it.result.timings.values())) if it.result is not None
                        else "-")
        rows.append((it, rest))
    # The two path columns share what the other columns leave of the width (3 per column rule).
    other = sum(max([len(c)] + [len(r[k]) for _, r in rows]) for k, c in enumerate(cols[2:]))
    room = max(24, out.width - other - 3 * len(cols) - 1)
    out_room = min(max(len(os.path.basename(it.dst)) for it in items), room // 2)
    src_room = max(12, room - out_room)
    # Files of one batch share most of their names: what they share is cut, what tells them
    # apart stays.
    srcs = distinct_cut([it.src for it in items], src_room)
    dsts = distinct_cut([os.path.basename(it.dst) for it in items], out_room)
    for (it, rest), src, dst in zip(rows, srcs, dsts):
        status = it.status
        rest = [safe(v) if v != status else f"[{style.get(status, 'red')}]{safe(v)}[/]"
                for v in rest]
        t.add_row(safe(src), safe(dst), *rest)
    out.print(t)
    _summary(out, items)


def _summary(out, items) -> None:
    """'N of M converted into DIR', then one line per failed file (all that -q prints)."""
    ok = sum(it.status == "ok" for it in items)
    skipped = sum(it.status == "skipped" for it in items)
    line(out, "", f"{ok} of {len(items)} converted" + (f" into {_common_dir(items)}" if ok else "")
         + (f", {skipped} skipped (output exists)" if skipped else ""), whole=True)
    for it in items:  # like the result and error: lines, one line each (grep-able)
        if it.status not in ("ok", "skipped"):
            line(out, f"[bold]{safe(it.status)}[/]:", f"{it.src}: {it.message}"
                 if it.src not in it.message else it.message, whole=True)
    existing = sum(it.exists for it in items)
    if existing:
        line(out, "hint:", f"{existing} output(s) already exist: use --skip-existing to leave "
                           f"them alone or --force to overwrite them")


def _common_dir(items) -> str:
    import os

    dsts = [os.path.dirname(it.dst) or "." for it in items if it.status == "ok"]
    return os.path.commonpath(dsts) if dsts else "."
