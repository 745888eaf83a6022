"""Output of ``convert --generic``: which blocks were fused, where, how well they check out, and
which were left alone (and why)."""
from __future__ import annotations

from typing import Any, Dict

from .console import (
    console,
    fmt_rel,
    human_bytes,
    line,
    quiet,
    render_timings,
    safe,
    shorten_path,
    timings_json,
)

__all__ = ["generic_to_dict", "render_generic"]


def generic_to_dict(r) -> Dict[str, Any]:
    rep = r.report
    return {
        "src": r.src, "dst": r.dst, "mode": "generic", "fused_blocks": len(rep.blocks),
        "keys_in": rep.keys_in, "keys_out": rep.keys_out, "passthrough_keys": rep.passthrough,
        "already_fused": rep.already_fused,
        "left_alone": [{"path": p, "block": b, "why": w} for p, b, w in rep.left_alone],
        "size_in": r.size_in, "size_out": r.size_out,
        "max_rel_diff": r.max_rel,
        "blocks": [dict(b.to_dict(), max_rel_diff=r.checks.get(b.path)) for b in rep.blocks],
        "notes": r.notes, **timings_json(r.timings),
    }


def _channels(b) -> str:
    cin = b.in_channels
    return f"{cin if cin is not None else '?'}->{b.out_channels}"


def _families(blocks):
    """[(family, naming, '7 MobileOneBlock, 4 RepMixer')] in order of first appearance."""
    fastvit = {b.naming for b in blocks if b.family.startswith("FastViT")}
    groups: Dict[tuple, Dict[str, int]] = {}
    for b in blocks:
        family = (next(x.family for x in blocks if x.family.startswith("FastViT"))
                  if b.block_type == "MobileOneBlock" and b.naming in fastvit else b.family)
        counts = groups.setdefault((family, b.naming), {})
        counts[b.block_type] = counts.get(b.block_type, 0) + 1
    return [(f, n, ", ".join(f"{c} {t}" for t, c in counts.items()))
            for (f, n), counts in groups.items()]


def _assumed(b) -> str:
    """What the tensors did not say about a block, and where the value came from instead."""
    said = []
    if b.kernel_from not in ("weights", "nested"):
        said.append(f"kernel {b.kernel_text} from {b.kernel_from}")
    if b.groups_from not in ("identity BN", "identity", "nested", "not needed"):
        said.append(f"groups {b.groups} ({b.groups_from}; --groups to change)")
    return ", ".join(said)


_AFTER_DOT = r"(?<=[._])"  # a block path breaks after a '.' or '_'
_CAMEL = r"(?<=[a-z])(?=[A-Z])"  # a type name breaks between its words


def _name_widths(rows, names, width: int):
    """Widths of the block and type columns in what the other columns (kept whole) leave: both
    whole where they fit, else shared, each at least its longest unbreakable piece."""
    import re

    def longest(i, pattern=None):
        cells = [c for row in rows for c in ([row[i]] if pattern is None
                                             else re.split(pattern, row[i]))]
        return max([len(names[i])] + [len(c) for c in cells])

    rest = width - 2 * (len(names) - 1) - sum(longest(i) for i in range(2, len(names)))
    path_full, type_full = longest(0), longest(1)
    if path_full + type_full <= rest:
        return path_full, type_full
    type_w = max(longest(1, _CAMEL), min(type_full, 14, rest // 2))
    return max(longest(0, _AFTER_DOT), rest - type_w), type_w


def _wrapped(text: str, width: int, pattern: str) -> str:
    """``text`` on lines of at most ``width`` characters, broken only where ``pattern`` allows
    (a piece longer than a line keeps its own line)."""
    import re

    lines = [""]
    for piece in re.split(pattern, text):
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(safe(ln) for ln in lines)


def render_generic(r) -> None:
    from rich import box
    from rich.table import Table

    rep = r.report
    out = console()
    if quiet():
        line(out, "", f"{r.dst or '(not written)'}: {len(rep.blocks)} block(s) fused"
             + (f", max rel diff {fmt_rel(r.max_rel)}" if r.checks else " (not checked)"),
             whole=True)
        return
    blocks = Table(title="re-parameterisable blocks fused", header_style="bold", box=box.SIMPLE,
                   pad_edge=False, collapse_padding=True, show_edge=False)
    assumed, rows = [], []
    for b in rep.blocks:
        note = _assumed(b)
        if note:
            assumed.append(f"{b.path or '(top level)'}: no conv branch: {note}")
        kernel = b.kernel_text + ("" if b.kernel_from in ("weights", "nested") else "*")
        groups = "-" if b.groups is None else (
            f"{b.groups}" + ("" if b.groups_from in ("identity BN", "identity", "nested")
                             else "*"))
        rows.append([b.path or "(top level)", b.block_type, b.summary, kernel, groups,
                     _channels(b), fmt_rel(r.checks.get(b.path)) if r.checks else "-"])
    names = ("block", "type", "branches", "kernel", "groups", "channels", "rel diff")
    path_w, type_w = _name_widths(rows, names, out.width)
    for col in names:
        blocks.add_column(col, no_wrap=True, overflow="fold",
                          justify="right" if col == "rel diff" else "left")
    for row in rows:
        blocks.add_row(_wrapped(row[0], path_w, _AFTER_DOT), _wrapped(row[1], type_w, _CAMEL),
                       *(safe(c) for c in row[2:]))
    out.print(blocks)
    for family, naming, types in _families(rep.blocks):
        line(out, "", f"{family} ({naming} names): {types}")
    line(out, "", "rel diff: max rel diff of each fused block against its branches")
    for text in assumed:
        line(out, "*", text)
    for path, block, why in rep.left_alone:
        line(out, "not fused:", f"{path or '(top level)'}: {block}: {why}")
    if any(b.groups is None for b in rep.blocks):
        line(out, "", "groups '-': no identity branch, so groups are neither needed nor read; "
                      "the fused conv keeps the train conv's groups and weight shape")
    t = Table(title="mobileone convert --generic", show_header=False)
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", overflow="fold")
    room = max(20, out.width - 12 - 7)
    t.add_row("file", safe(shorten_path(r.src, room)))
    t.add_row("output", safe(shorten_path(r.dst, room)) if r.dst else "(not written)")
    t.add_row("fused blocks", f"{len(rep.blocks):,}")
    t.add_row("keys", f"{rep.keys_in:,} -> {rep.keys_out:,}")
    t.add_row("other keys", f"{rep.passthrough:,} copied unchanged")
    t.add_row("size", f"{human_bytes(r.size_in)} -> "
                      f"{human_bytes(r.size_out) if r.size_out else '-'}")
    t.add_row("check", "skipped (--no-verify)" if not r.checks else
              f"max rel diff {fmt_rel(r.max_rel)} (each block against its own branches, "
              f"relative to max |output|)")
    out.print(t)
    for note in r.notes:
        line(out, "note:", note)
    render_timings(out, r.timings)
