"""How cross-layer equalization went (fuse.equalize.Equalization.describe()), in a few lines
shared by ``convert --equalize`` and ``quant --equalize``."""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Tuple

__all__ = ["equalization_lines"]


def _spread(values: List[float]) -> str:
    return f"{statistics.median(values):.1f}x" if values else "-"


def equalization_lines(d: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(label, text) lines: what was equalized, how far, and every skipped pair with its
    reason (pairs with the same reason share a line)."""
    pairs = d["pairs"]
    done = [p for p in pairs if p["equalized"]]
    before = [p["spread_before"] for p in done if p["spread_before"] is not None]
    after = [p["spread_after"] for p in done if p["spread_after"] is not None]
    state = ("converged" if d["converged"]
             else f"not converged: scales still moving by {d['residual']:.1%}")
    out = [("equalized:", f"{len(done)} of {len(pairs)} consecutive layer pairs across ReLU "
                          f"({d['sweeps']} sweeps, {state}); weight spread (max/median channel "
                          f"range) of their first layer, median over pairs: "
                          f"{_spread(before)} -> {_spread(after)}")]
    by_reason: Dict[str, List[str]] = {}
    for p in pairs:
        if not p["equalized"]:
            by_reason.setdefault(p["reason"] or "", []).append(
                f"{p['producer']} -> {p['consumer']}")
    for reason, names in by_reason.items():
        out.append(("skipped:", f"{', '.join(names)}: {reason}"))
    return out
