"""Output of batch ``convert`` (several files): one row per file, the exit code of the run."""
from __future__ import annotations

from typing import Any, Dict

from .console import console, fmt_rel, safe
from .convert import convert_to_dict

__all__ = ["render_batch", "batch_to_dict"]


def batch_to_dict(items) -> Dict[str, Any]:
    from ..errors import most_serious

    return {
        "exit_code": most_serious(it.exit_code for it in items),
        "converted": sum(it.status == "ok" for it in items), "failed":
            sum(it.status != "ok" for it in items),
        "files": [{"src": it.src, "dst": it.dst, "status": it.status, "exit_code": it.exit_code,
                   "message": it.message, "arch": it.arch, "layout": it.layout,
                   "max_rel": it.max_rel, "rounded_max_rel": it.rounded_rel,
                   "summary": convert_to_dict(it.result) if it.result is not None else None}
                  for it in items],
    }


def render_batch(items) -> None:
    from rich.table import Table

    out = console(min_width=110)
    t = Table(title="mobileone convert (batch)", show_header=True, header_style="bold")
    rounded = [it.result.dtype_out for it in items
               if it.result is not None and it.rounded_rel is not None]
    cols = ["file", "arch", "layout", "result", "max rel diff"]
    if rounded:
        cols.append(f"after {rounded[0]} rounding")
    for col in cols:
        t.add_column(col, justify="left" if col in ("file", "arch", "layout", "result") else "right")
    style = {"ok": "green", "mismatch": "red", "bad input": "yellow", "internal error": "red"}
    for it in items:
        row = [safe(it.src), safe(it.arch or "-"), safe(it.layout or "-"),
               f"[{style.get(it.status, 'red')}]{safe(it.status)}[/]", fmt_rel(it.max_rel)]
        if rounded:
            row.append(fmt_rel(it.rounded_rel))
        t.add_row(*row)
    out.print(t)
    ok = sum(it.status == "ok" for it in items)
    out.print(f"{ok} of {len(items)} converted" + (f" into {safe(_common_dir(items))}"
                                                    if ok else ""))
    for it in items:
        if it.status != "ok":
            out.print(f"[bold]{safe(it.status)}[/]: {safe(it.message)}")


def _common_dir(items) -> str:
    import os

    dsts = [os.path.dirname(it.dst) or "." for it in items if it.status == "ok"]
    return os.path.commonpath(dsts) if dsts else "."
