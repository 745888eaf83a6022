"""Rich table of an :func:`mobileone_cli.inspection.inspect_file` report.

Everything in the report came from the file: every string goes through ``safe`` (markup
escaped, control characters shown escaped, long strings cut), and lists are cut to a few
entries; ``--json`` keeps them all.
"""
from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["render_inspect", "UNKNOWN_SHOWN", "METADATA_SHOWN", "VALUE_SHOWN"]

UNKNOWN_SHOWN = 8  # unknown keys listed in the table; --json lists them all
METADATA_SHOWN = 16  # safetensors metadata entries shown as rows; --json holds them all
VALUE_SHOWN = 200  # characters of one key or metadata value in the table


def _few(items: List[str], n: int) -> str:
    from .console import safe

    shown = ", ".join(safe(x, VALUE_SHOWN) for x in items[:n])
    return shown + (f" ... and {len(items) - n:,} more" if len(items) > n else "")


def render_inspect(r: Dict[str, Any]) -> None:
    from rich.table import Table

    from .console import console, human_bytes, safe

    t = Table(title="mobileone inspect", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("file", safe(r["file"]))
    t.add_row("format", f"{r['file_format']} ({human_bytes(r['size'])})")
    t.add_row("wrapper", safe(repr(r["wrapper"])) + " entry" if r["wrapper"]
              else "none (bare state dict)")
    if r["other_entries"]:
        t.add_row("other entries", _few(r["other_entries"], UNKNOWN_SHOWN))
    if r["stripped_prefix"]:
        t.add_row("stripped prefix", safe(repr(r["stripped_prefix"])))
    if r["stubbed_globals"]:
        t.add_row("placeholders", f"{len(r['stubbed_globals'])} foreign global(s) not loaded: "
                  + _few(r["stubbed_globals"], 4))
    if r["trusted"]:
        t.add_row("trusted", "yes: unpickled with weights_only=False (--trust-file)")
    t.add_row("layout", safe(r["layout"]))
    t.add_row("form", safe(r["form"]))
    t.add_row("variant", safe(r["variant"]))
    t.add_row("classes", str(r["num_classes"]) if r["num_classes"] else "none (headless)")
    prefix = repr(r["prefix"]) if r["prefix"] else "none"
    if r["implied_root"]:
        prefix += f" (backbone only: the layout's {r['implied_root']!r} root is absent)"
    t.add_row("prefix", safe(prefix))
    t.add_row("dtype", safe(r["dtype"]))
    t.add_row("keys", f"{r['keys']:,} ({r['mobileone_keys']:,} MobileOne)")
    t.add_row("params", f"{r['params']:,} (MobileOne, learnable)")
    unknown = r["unknown_keys"]
    t.add_row("unknown keys", f"{len(unknown):,}: {_few(unknown, UNKNOWN_SHOWN)}" if unknown
              else "none")
    metadata = r.get("metadata") or {}
    # A header may hold a million entries: sorting them all is fine, a row each is not.
    for k in sorted(metadata)[:METADATA_SHOWN]:
        t.add_row(f"metadata.{safe(k, VALUE_SHOWN)}", safe(metadata[k], VALUE_SHOWN))
    if len(metadata) > METADATA_SHOWN:
        t.add_row("metadata", f"... and {len(metadata) - METADATA_SHOWN:,} more entries "
                              f"(--json lists them all)")
    console().print(t)
