"""Output of ``mobileone quant`` (a quantize.QuantReport): tables, the SQNR picture, plain data."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from ..rules.tolerances import QUANT_FLAG_DB
from .console import console, human_bytes, line, quiet, render_timings, safe, timings_json, verbose
from .quant_equalize import equalized_line, equalized_to_dict, render_equalized
from .verdict import finite_json

__all__ = ["quant_to_dict", "render_quant", "profile_rows", "quant_plot", "result_line"]


def _form(f) -> Optional[Dict[str, Any]]:
    if f is None:
        return None
    d = {k: v for k, v in asdict(f).items() if k not in ("blocks",)}
    d["blocks"] = [asdict(b) for b in f.blocks]
    for key in ("accuracy_fp32", "accuracy_int8"):
        acc = getattr(f, key)
        d[key] = None if acc is None else {"top1": acc[0], f"top{f.topk}": acc[1]}
    d["flag_db"] = QUANT_FLAG_DB
    return d


def quant_to_dict(r) -> Dict[str, Any]:
    """Plain data for ``--json``; inf/NaN become null."""
    return finite_json({
        "checkpoint": r.source, "arch": r.arch.name, "num_classes": r.arch.num_classes,
        "fused_in_memory": r.fused_here, "scheme": r.scheme,
        "quantization": {"weights": f"int8 symmetric [-127, 127], {r.scheme}",
                         "activations": "int8 affine [-128, 127], per tensor, calibration "
                                        "min/max"},
        "calibration": asdict(r.calibration),
        "deploy": _form(r.deploy), "train": _form(r.train),
        "export": asdict(r.export) if r.export is not None else None,
        "equalized": (equalized_to_dict(r.equalized, _form)
                      if getattr(r, "equalized", None) is not None else None),
        "seconds": r.seconds, "notes": list(r.notes), **timings_json(r.timings),
    })


def _db(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return "inf" if math.isinf(x) else f"{x:.1f}"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _spread(x: Optional[float]) -> str:
    return "-" if x is None else (f"{x:.0f}x" if x >= 100 else f"{x:.1f}x")


@dataclass
class ProfileRow:
    """A row of the picture, in the terms of render.pictures.error_profile: the relative RMS
    quantization noise of the block's median channel, the block alone int8 (10^(-SQNR/20)),
    against the flag level."""

    name: str
    block: str  # the SQNR, shown after the value
    rel: Optional[float]
    bound_rel: Optional[float]
    within: bool


def profile_rows(form) -> List[ProfileRow]:
    bound = (None if form.typical_db is None
             else 10 ** (-(form.typical_db - QUANT_FLAG_DB) / 20))
    rows = []
    for b in form.blocks:
        db = b.channel_db
        rel = None if db is None else (0.0 if math.isinf(db) else 10 ** (-db / 20))
        rows.append(ProfileRow(b.name, f"{_db(db):>5} dB", rel, bound, not b.flagged))
    return rows


def _head(r, out) -> None:
    from rich.table import Table

    s = r.source
    head = Table.grid(padding=(0, 1))
    head.add_column(style="bold")
    head.add_column()
    classes = f"{r.arch.num_classes} classes" if r.arch.has_head else "no head"
    fused = ", fused in memory" if r.fused_here else ""
    head.add_row("quant", safe(f"{s.get('path')} ({s.get('layout')}, {s.get('form')} form, "
                               f"{r.arch.name}, {classes}{fused})"))
    c = r.calibration
    shape = "x".join(str(n) for n in c.shape)
    if c.kind == "synthetic":
        head.add_row("calib", f"{c.images} seeded random images {shape} (seed {c.seed})")
    else:
        bad = f", {c.unreadable} unreadable (skipped)" if c.unreadable else ""
        some = f" of {c.listed}" if c.images + c.unreadable < c.listed else ""
        head.add_row("calib", safe(f"{c.images}{some} images from {c.root}{bad}"))
        head.add_row("pipeline", safe(c.preprocessing))
    head.add_row("int8", f"weights symmetric {r.scheme}; activations affine per tensor "
                         f"(calibration min/max)")
    out.print(head)


def _blocks(r, out) -> None:
    from rich import box
    from rich.table import Table

    out.print("[bold]per block[/]: SQNR in dB (higher is better), deploy form")
    t = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    cols = ["block", "w spread", "own", "own ch.", "cumul."]
    if r.train is not None:
        cols += ["train ch.", "train cumul."]
    cols.append("")
    for col in cols:
        t.add_column(col, justify="left" if col in ("block", "") else "right")
    train = {b.name: b for b in r.train.blocks} if r.train is not None else {}
    for b in r.deploy.blocks:
        row = [safe(b.name), _spread(b.spread), _db(b.own_db), _db(b.channel_db),
               _db(b.cumulative_db)]
        if r.train is not None:
            tb = train.get(b.name)
            row += [_db(tb.channel_db), _db(tb.cumulative_db)] if tb else ["", ""]
        row.append("[bold red]FLAG[/]" if b.flagged else "")
        t.add_row(*row)
    out.print(t)
    out.print("w spread: max/median of per-channel max |w|; own: only this block int8; "
              "own ch.: its median output channel; cumul.: every block int8, measured here")


def _end_to_end(r, out) -> None:
    from rich import box
    from rich.table import Table

    what = "logits" if r.arch.has_head else "features"
    forms = [("int8 deploy", r.deploy)]
    if r.train is not None:
        forms.append(("int8 train", r.train))
    out.print(f"[bold]end to end[/], against fp32 on the {r.deploy.images} calibration images")
    t = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column("")
    for name, _ in forms:
        t.add_column(name, justify="right")
    e = r.export
    if e is not None:
        t.add_column(".pte (run)", justify="right")
    rows = [(f"SQNR {what} dB", [_db(f.output_db) for _, f in forms],
             _db(e.output_db) if e else None)]
    if r.arch.has_head:
        rows += [("top-1 agreement", [_pct(f.top1_agreement) for _, f in forms],
                  _pct(e.top1_agreement) if e else None),
                 (f"top-{r.deploy.topk} agreement", [_pct(f.top5_agreement) for _, f in forms],
                  _pct(e.top5_agreement) if e else None)]
    rows.append(("max |diff|", [f"{f.max_abs_diff:.2e}" for _, f in forms],
                 f"{e.max_abs_diff:.2e}" if e else None))
    if r.deploy.accuracy_fp32 is not None:
        rows += [("top-1 fp32 -> int8", [f"{_pct(f.accuracy_fp32[0])} -> "
                                         f"{_pct(f.accuracy_int8[0])}" for _, f in forms],
                  "-" if e else None)]
    for label, vals, pte in rows:
        t.add_row(label, *vals, *([pte] if e is not None else []))
    out.print(t)


def verdict_text(r) -> str:
    """The one-line finding: which block dominates the int8 error, or that none does."""
    f = r.deploy
    if f.typical_db is None:
        return "no block's SQNR could be measured"
    if not f.flagged:
        return (f"no block dominates: every block's median channel is within "
                f"{QUANT_FLAG_DB:g} dB of the typical block's ({f.typical_db:.1f} dB)")
    by = {b.name: b for b in f.blocks}
    worst = by[f.flagged[0]]
    more = f" and {len(f.flagged) - 1} more" if len(f.flagged) > 1 else ""
    return (f"FLAG: {worst.name}{more} dominate the int8 error: its median channel keeps "
            f"{_db(worst.channel_db)} dB, {f.typical_db - worst.channel_db:.1f} dB below the "
            f"typical block's {f.typical_db:.1f} dB (weight spread {_spread(worst.spread)})")


def result_line(r) -> str:
    """``-q``: the output SQNR and agreement, the finding, and the program when exported."""
    f = r.deploy
    text = (f"int8 {r.scheme}: logits SQNR {_db(f.output_db)} dB, top-1 agreement "
            f"{_pct(f.top1_agreement)}; {verdict_text(r)}")
    if r.export is not None:
        e = r.export
        text += f"; {e.path}: {_db(e.output_db)} dB, top-1 agreement {_pct(e.top1_agreement)}"
    if getattr(r, "equalized", None) is not None:
        text += f"; {equalized_line(r.equalized, _db)}"
    return text


def quant_plot(r) -> str:
    """The per-block picture as an SVG document (``--plot``)."""
    from .svg import verify_svg

    name = r.source.get("path") or "CKPT"
    return verify_svg(profile_rows(r.deploy), f"mobileone quant {name}: int8 {r.scheme}",
                      subtitle=f"relative RMS int8 noise of each block's median channel, the "
                               f"block alone int8 (log scale; black line = {QUANT_FLAG_DB:g} dB "
                               f"below the typical block)")


SHOWN_FLAGGED = 5  # flagged blocks named in the short report


def render_quant(r, all_blocks: bool = False) -> None:
    """The head, the finding and the end-to-end numbers first; every block (table and noise
    picture) with ``all_blocks`` or ``-v``."""
    from .pictures import error_profile, mark_char

    out = console()
    if quiet():
        line(out, "", result_line(r), whole=True)
        return
    _head(r, out)
    finding = verdict_text(r)
    if finding.startswith("FLAG: "):
        line(out, "[bold red]FLAG:[/]", finding[len("FLAG: "):], whole=True)
    else:
        line(out, "", finding)
    _end_to_end(r, out)
    if all_blocks or verbose():
        _blocks(r, out)
        line(out, "[bold]own ch.[/]", f"per block as relative RMS noise, 10^(-dB/20), log "
                  f"scale; {mark_char(out)} = {QUANT_FLAG_DB:g} dB below the typical block")
        for row in error_profile(out, profile_rows(r.deploy)):
            out.print(row)
    else:
        flagged = [b for b in r.deploy.blocks if b.flagged]
        for b in flagged[:SHOWN_FLAGGED]:
            line(out, "[bold red]flagged:[/]", f"{b.name}: own ch. {_db(b.channel_db)} dB, "
                                              f"weight spread {_spread(b.spread)}")
        line(out, "", f"{len(r.deploy.blocks)} blocks measured; every block's SQNR: "
                      f"--all-blocks or -v")
    if r.train is not None and r.train.output_db is not None and r.deploy.output_db is not None:
        d = r.train.output_db - r.deploy.output_db
        line(out, "", f"fusion under int8: the unfused model's output SQNR is {abs(d):.1f} dB "
                      f"{'higher' if d >= 0 else 'lower'} than the fused one's")
    if getattr(r, "equalized", None) is not None:
        render_equalized(r, out, _db, _pct)
    e = r.export
    if e is not None:
        outside = (f"; outside the XNNPACK delegate: {', '.join(e.outside_delegate)}"
                   if e.outside_delegate else "")
        eq = ", equalized + bias-corrected" if e.equalized else ""
        line(out, "", f"wrote {e.path} ({human_bytes(e.size)}, int8 {e.scheme}{eq}, PT2E + "
                      f"XNNPACK)"
                      f": executed in the ExecuTorch runtime on {e.images} images{outside}")
    for note in r.notes:
        line(out, "note:", note)
    render_timings(out, r.timings)
