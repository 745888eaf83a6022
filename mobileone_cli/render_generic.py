"""Output of ``convert --generic``: which blocks were fused, where, and how well they check out."""
from __future__ import annotations

from typing import Any, Dict

from .render import console, fmt_rel

__all__ = ["generic_to_dict", "render_generic"]


def generic_to_dict(r) -> Dict[str, Any]:
    rep = r.report
    return {
        "src": r.src, "dst": r.dst, "mode": "generic", "fused_blocks": len(rep.blocks),
        "keys_in": rep.keys_in, "keys_out": rep.keys_out, "passthrough_keys": rep.passthrough,
        "already_fused": rep.already_fused, "size_in": r.size_in, "size_out": r.size_out,
        "max_rel_diff": r.max_rel,
        "blocks": [dict(b.to_dict(), max_rel_diff=r.checks.get(b.path)) for b in rep.blocks],
        "notes": r.notes,
    }


def _channels(b) -> str:
    cin = b.in_channels
    return f"{cin if cin is not None else '?'} -> {b.out_channels}"


def _groups(b) -> str:
    if b.groups is None:
        return f"- (in/groups {b.in_per_group})"
    return f"{b.groups}" + ("" if b.groups_from == "identity BN" else f" ({b.groups_from})")


def render_generic(r) -> None:
    from rich.table import Table

    from .commands._common import human_bytes

    rep = r.report
    out = console()
    blocks = Table(title="MobileOne-style blocks fused", header_style="bold")
    for col in ("block", "naming", "branches", "kernel", "groups", "channels", "max rel diff"):
        blocks.add_column(col)
    for b in rep.blocks:
        kernel = b.kernel_text + ("" if b.kernel_from == "weights" else f" ({b.kernel_from})")
        blocks.add_row(b.path or "(top level)", b.naming, b.branches_text, kernel, _groups(b),
                       _channels(b), fmt_rel(r.checks.get(b.path)) if r.checks else "-")
    out.print(blocks)
    t = Table(title="mobileone convert --generic", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("file", f"{r.src} -> {r.dst or '(not written)'}")
    t.add_row("fused blocks", f"{len(rep.blocks):,}")
    t.add_row("keys", f"{rep.keys_in:,} -> {rep.keys_out:,}")
    t.add_row("other keys", f"{rep.passthrough:,} copied unchanged")
    t.add_row("size", f"{human_bytes(r.size_in)} -> "
                      f"{human_bytes(r.size_out) if r.size_out else '-'}")
    t.add_row("check", "skipped (--no-verify)" if not r.checks else
              f"max rel diff {fmt_rel(r.max_rel)} (each block against its branches, "
              f"relative to max |output|)")
    out.print(t)
    for note in r.notes:
        out.print(f"note: {note}")
