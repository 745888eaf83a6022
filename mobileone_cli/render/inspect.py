"""Rich table of an :func:`mobileone_cli.inspection.inspect_file` report."""
from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["render_inspect", "UNKNOWN_SHOWN"]

UNKNOWN_SHOWN = 8  # unknown keys listed in the table; --json lists them all


def _few(items: List[str], n: int) -> str:
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def render_inspect(r: Dict[str, Any]) -> None:
    from rich.table import Table

    from .console import console, human_bytes, safe

    t = Table(title="mobileone inspect", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("file", safe(r["file"]))
    t.add_row("format", f"{r['file_format']} ({human_bytes(r['size'])})")
    t.add_row("wrapper", repr(r["wrapper"]) + " entry" if r["wrapper"] else "none (bare state dict)")
    if r["other_entries"]:
        t.add_row("other entries", safe(", ".join(r["other_entries"])))
    if r.get("ema_note"):
        t.add_row("EMA", safe(r["ema_note"]))
    if r["stripped_prefix"]:
        t.add_row("stripped prefix", repr(r["stripped_prefix"]))
    if r["stubbed_globals"]:
        t.add_row("placeholders", f"{len(r['stubbed_globals'])} foreign global(s) not loaded: "
                  + safe(_few(r["stubbed_globals"], 4)))
    if r["trusted"]:
        t.add_row("trusted", "yes: unpickled with weights_only=False (--trust-file)")
    t.add_row("layout", r["layout"])
    t.add_row("form", r["form"])
    t.add_row("variant", safe(r["variant"]))
    t.add_row("classes", str(r["num_classes"]) if r["num_classes"] else "none (headless)")
    prefix = repr(r["prefix"]) if r["prefix"] else "none"
    if r["implied_root"]:
        prefix += f" (backbone only: the layout's {r['implied_root']!r} root is absent)"
    t.add_row("prefix", safe(prefix))
    t.add_row("dtype", r["dtype"])
    t.add_row("keys", f"{r['keys']:,} ({r['mobileone_keys']:,} MobileOne)")
    t.add_row("params", f"{r['params']:,} (MobileOne, learnable)")
    unknown = r["unknown_keys"]
    t.add_row("unknown keys", f"{len(unknown)}: {safe(_few(unknown, UNKNOWN_SHOWN))}" if unknown
              else "none")
    for k, v in sorted((r.get("metadata") or {}).items()):
        t.add_row(f"metadata.{safe(k)}", safe(v))
    console().print(t)
