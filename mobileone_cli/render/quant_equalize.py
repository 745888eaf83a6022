"""``mobileone quant --equalize``: int8 before and after data-free quantization, side by side
(a jobs.quant_equalize.EqualizedQuant)."""
from __future__ import annotations

from typing import Any, Dict, List

from .console import line

__all__ = ["equalized_to_dict", "render_equalized", "equalized_line"]


def equalized_to_dict(e, form_dict) -> Dict[str, Any]:
    """Plain data; ``form_dict`` renders one quant.measure.FormResult."""
    return {"equalization": e.equalization.describe(), "bias_corrected": e.bias_corrected,
            "before": {k: form_dict(v) for k, v in e.before.items()},
            "after": {k: form_dict(v) for k, v in e.after.items()},
            "seconds": e.seconds, "notes": list(e.notes)}


def _schemes(e) -> List[str]:
    return [s for s in ("per-tensor", "per-channel") if s in e.before]


def equalized_line(e, db) -> str:
    """One line: the output SQNR of each scheme, before -> after."""
    return "equalized: " + ", ".join(
        f"{s} {db(e.before[s].output_db)} -> {db(e.after[s].output_db)} dB"
        for s in _schemes(e))


def render_equalized(r, out, db, pct) -> None:
    """The equalization, then per block and end to end, each scheme before and after."""
    from rich import box
    from rich.table import Table

    from .equalize import equalization_lines

    e = r.equalized
    what = ("equalized + bias-corrected" if e.bias_corrected else "equalized")
    out.print(f"[bold]data-free quantization[/]: before = deploy form, after = {what} "
              f"(Nagel et al. 2019)")
    for label, text in equalization_lines(e.equalization.describe()):
        line(out, label, text)
    schemes = _schemes(e)
    t = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column("block")
    t.add_column("w spread", justify="right")
    for s in schemes:
        t.add_column(f"{s}", justify="right")
        t.add_column("after", justify="right")
    after = {s: {b.name: b for b in e.after[s].blocks} for s in schemes}
    first = e.before[schemes[0]]
    for b in first.blocks:
        a = after[schemes[0]][b.name]
        spread = ("-" if b.spread is None or a.spread is None
                  else f"{b.spread:.1f}x -> {a.spread:.1f}x")
        row = [b.name, spread]
        for s in schemes:
            before = {x.name: x for x in e.before[s].blocks}[b.name]
            row += [db(before.cumulative_db), db(after[s][b.name].cumulative_db)]
        t.add_row(*row)
    out.print("[bold]per block[/]: SQNR in dB of the whole int8 network at the block, "
              "before and after")
    out.print(t)
    end = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    end.add_column("")
    for s in schemes:
        end.add_column(s, justify="right")
        end.add_column("after", justify="right")
    label = "logits" if r.arch.has_head else "features"
    rows = [(f"SQNR {label} dB", lambda f: db(f.output_db))]
    if r.arch.has_head:
        rows.append(("top-1 agreement", lambda f: pct(f.top1_agreement)))
    if first.accuracy_int8 is not None:
        rows.append(("top-1 int8", lambda f: pct(f.accuracy_int8[0])))
    for name, cell in rows:
        end.add_row(name, *[cell(x) for s in schemes for x in (e.before[s], e.after[s])])
    out.print(f"[bold]end to end[/], before and after, on the {first.images} calibration images"
              + (f" (fp32 top-1 {pct(first.accuracy_fp32[0])})"
                 if first.accuracy_fp32 is not None else ""))
    out.print(end)
    line(out, "", "after: block outputs are the equalized ones (channels rescaled), so a "
                  "block's SQNR weighs its channels differently; the logits are the same "
                  "function")
