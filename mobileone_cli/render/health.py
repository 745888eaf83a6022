"""The health section of ``inspect`` (and the health lines of ``convert``), from plain data."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from .console import console, line, safe, verbose

__all__ = ["render_health", "health_lines", "verdict_line"]

SHOWN = 3  # names listed per row; --json lists them all


def _few(items: List[str], n: int = SHOWN) -> str:
    if verbose():  # -v: every name
        n = len(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return safe(", ".join(items[:n]) + more)


def _pct(x: float) -> str:
    return "0%" if x == 0 else f"{x:.2%}" if x >= 1e-4 else f"{x * 100:.1e}%"


def verdict_line(h: Dict[str, Any]) -> str:
    nf, nw = len(h["faults"]), len(h["warnings"])
    if h["verdict"] == "healthy":
        return "health: healthy"
    counts = [f"{n} {word}{'s' if n != 1 else ''}"
              for n, word in ((nf, "fault"), (nw, "warning")) if n]
    return f"health: {h['verdict']} ({', '.join(counts)})"


def _rows(h: Dict[str, Any]) -> List[tuple]:
    rows = []
    if "non_finite" in h:
        bad = h["non_finite"]
        rows.append(("NaN/Inf", "none" if not bad else f"{len(bad)} tensor(s): " + _few(
            [f"{b['key']} ({b['nan']} NaN, {b['inf']} Inf)" for b in bad])))
    var = h.get("variance")
    if var is not None:
        if not var["batchnorms"]:
            text = "no BatchNorm"
        else:
            text = f"{var['batchnorms']} BatchNorm(s)"
            if var["min"] is not None:
                text += f", min {var['min']:.3g} ({safe(var['min_key'])})"
            neg = sum(v["count"] for v in var["negative"])
            zero = sum(v["count"] for v in var["zero"])
            text += f"; negative: {neg or 'none'}; zero: {zero or 'none'}"
        rows.append(("running_var", text))
    dead = h.get("dead")
    if dead is not None:
        parts = []
        if dead["branches"]:
            parts.append(f"{len(dead['branches'])} dead branch(es): {_few(dead['branches'])}")
        if dead["channels"]:
            parts.append(f"{sum(c['count'] for c in dead['channels'])} channel(s) with gamma 0")
        if dead["blocks"]:
            parts.append(f"{sum(b['channels'] for b in dead['blocks'])} constant block "
                         f"output(s) in " + _few([b["block"] for b in dead["blocks"]]))
        rows.append(("dead", "; ".join(parts) or "none"))
    eps = h.get("eps")
    if eps is not None:
        if not eps["measured"]:
            text = f"not measured: {safe(eps['reason'])}"
        elif eps["max"] is None:
            text = "not measured: no block could be fused"
        else:
            a, b = eps["eps"]
            worst = ", ".join(f"{safe(w['block'])} {w['change']:.1e}" for w in eps["worst"])
            measured = len(eps["blocks"]) - len(eps["not_measured"])
            text = (f"max {eps['max']:.1e} (eps {a:.0e} -> {b:.0e}); worst: {worst}; "
                    f"{eps['above']} of {measured} block(s) above {eps['warn_level']:.0e}")
            if eps["not_measured"]:
                text += ("; not measurable (NaN, negative variance): "
                         + _few(eps["not_measured"]))
        rows.append(("eps sensitivity", text))
    for fmt, r in (h.get("headroom") or {}).items():
        if r["max_key"] is None:
            rows.append((f"{fmt} range", "no float values"))
            continue
        text = f"max |x| {r['max_abs']:.3g} ({safe(r['max_key'])}) of {r['limit']:.5g}"
        text += f": {r['overflow']} beyond" if r["overflow"] else ", fits"
        text += (f"; nonzero values: {_pct(r['subnormal_share'])} subnormal, "
                 f"{_pct(r['zero_share'])} to zero")
        rows.append((f"{fmt} range", text))
    dt = h.get("dtypes")
    if dt is not None:
        text = ", ".join(f"{safe(d)}: {n:,}" for d, n in dt["counts"].items()) or "no tensors"
        rows.append(("dtypes", text + (" (mixed float dtypes)" if dt["mixed"] else "")))
    if h.get("unread"):
        rows.append(("not read", f"{len(h['unread'])} tensor(s) of a dtype numpy lacks: "
                     + _few(h["unread"])))
    return rows


def health_lines(h: Dict[str, Any]) -> List[str]:
    """'fault: ...' and 'warning: ...' lines, then the verdict line."""
    return ([f"fault: {safe(m)}" for m in h["faults"]]
            + [f"warning: {safe(m)}" for m in h["warnings"]] + [verdict_line(h)])


def render_health(h: Optional[Dict[str, Any]]) -> None:
    from rich.table import Table

    out = console()
    if h is None:
        out.print("health: not examined (--no-health)")
        return
    t = Table(title="health", show_header=False)
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", overflow="fold")
    for name, text in _rows(h):
        t.add_row(name, text)
    out.print(t)
    for m in h["faults"]:
        line(out, "fault:", m)
    for m in h["warnings"]:
        line(out, "warning:", m)
    line(out, "", verdict_line(h))
