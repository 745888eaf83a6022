"""Rich tables of an :func:`mobileone_cli.jobs.inspect.inspect_file` report (any ``kind``).

Everything in the report came from the file: every string goes through ``safe`` (markup
escaped, control characters shown escaped, long strings cut), and lists are cut to a few
entries; ``--json`` keeps them all.
"""
from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["render_inspect", "UNKNOWN_SHOWN"]

UNKNOWN_SHOWN = 8  # unknown keys listed in the table; --json lists them all
STRUCTURE_SHOWN = 12  # top-level entries listed in the table
METADATA_SHOWN = 16  # safetensors metadata entries shown as rows; --json holds them all
VALUE_SHOWN = 200  # characters of one key or metadata value in the table


def _few(items: List[str], n: int) -> str:
    from .console import verbose

    if verbose():  # -v: every name
        n = len(items)
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _path(r: Dict[str, Any], key: str = "file") -> str:
    """The file's path, shortened in its folders to what the value column has (the table's
    first column is at most ~18 characters wide)."""
    from .console import safe, shorten_path, width

    return safe(shorten_path(r[key], max(20, width() - 25)))


def _file_rows(t, r: Dict[str, Any]) -> None:
    """What every checkpoint report has: file, container, how it was read."""
    from .console import human_bytes, safe

    t.add_row("file", _path(r))
    t.add_row("format", f"{r['file_format']} ({human_bytes(r['size'])})")
    rows = r.get("structure") or []
    if r["file_format"] != "safetensors" and rows:
        from .console import verbose

        shown_n = len(rows) if verbose() else STRUCTURE_SHOWN
        shown = [f"{safe(x['key'])}: {safe(x['kind'])}"
                 + (f" ({x['items']:,} item{'s' if x['items'] != 1 else ''})"
                    if x["items"] is not None else "")
                 + (f", {x['tensors']:,} tensors, {human_bytes(x['tensor_bytes'])}"
                    if x["tensors"] and not x["kind"].startswith("tensor") else "")
                 for x in rows[:shown_n]]
        more = len(rows) - shown_n
        t.add_row("top level", "\n".join(shown + ([f"... and {more} more"] if more > 0 else [])))
    if r.get("wrapper"):
        t.add_row("wrapper", safe(repr(r["wrapper"])) + " entry")
    elif r["file_format"] != "safetensors" and r["kind"] == "mobileone":
        t.add_row("wrapper", "none (bare state dict)")
    if r.get("ema_note"):
        t.add_row("EMA", safe(r["ema_note"]))
    if r.get("stripped_prefix"):
        t.add_row("stripped prefix", safe(repr(r["stripped_prefix"])))
    if r["stubbed_globals"]:
        t.add_row("placeholders", f"{len(r['stubbed_globals'])} foreign global(s) not loaded: "
                  + safe(_few(r["stubbed_globals"], 4)))
    if r["trusted"]:
        t.add_row("trusted", "yes: unpickled with weights_only=False (--trust-file)")


def _tensor_rows(t, r: Dict[str, Any]) -> None:
    from .console import human_bytes, safe

    dtypes = ", ".join(f"{safe(d)}: {n:,}" for d, n in r["dtypes"].items())
    t.add_row("tensors", f"{r['tensors']:,} ({human_bytes(r['tensor_bytes'])})"
              + (f"; {dtypes}" if dtypes else ""))


def _mobileone(t, r: Dict[str, Any]) -> None:
    from .console import safe

    t.add_row("layout", safe(r["layout"]))
    t.add_row("form", safe(r["form"]))
    t.add_row("variant", safe(r["variant"]))
    t.add_row("classes", str(r["num_classes"]) if r["num_classes"] else "none (headless)")
    prefix = repr(r["prefix"]) if r["prefix"] else "none"
    if r["implied_root"]:
        prefix += f" (backbone only: the layout's {r['implied_root']!r} root is absent)"
    t.add_row("prefix", safe(prefix))
    t.add_row("dtype", r["dtype"])
    t.add_row("keys", f"{r['keys']:,} ({r['mobileone_keys']:,} MobileOne)")
    t.add_row("params", f"{r['params']:,} (MobileOne, learnable)")
    _tensor_rows(t, r)
    unknown = r["unknown_keys"]
    t.add_row("unknown keys", f"{len(unknown)}: {safe(_few(unknown, UNKNOWN_SHOWN))}" if unknown
              else "none")


def _damaged(t, r: Dict[str, Any]) -> None:
    from .console import safe

    classes = f"{r['num_classes']} classes" if r["num_classes"] else "no head"
    where = f" under {r['prefix']!r}" if r["prefix"] else ""
    t.add_row("MobileOne", safe(f"DAMAGED {r['layout']} {r['form']}-form {r['variant']} "
                                f"({classes}){where}: convert refuses it"))
    for problem in r["damage"]:
        t.add_row("damage", safe(problem))
    t.add_row("keys", f"{r['keys']:,}")
    _tensor_rows(t, r)


def _checkpoint(t, r: Dict[str, Any]) -> None:
    from .console import safe

    t.add_row("MobileOne", "not recognised: " + safe(r["reason"]))
    t.add_row("keys", f"{r['keys']:,}")
    _tensor_rows(t, r)
    if r["unknown_keys"]:
        t.add_row("not recognised", safe(_few(r["unknown_keys"], UNKNOWN_SHOWN)))
    gen = r.get("generic")
    if gen is not None and (gen.get("types") or gen["problem"]):
        lines = [safe(f"{row['family']}: {row['count']} {row['block']} ({row['naming']}), "
                      f"{row['action']}") for row in gen.get("types", [])]
        lines += [safe(f"left alone: {a['path'] or '(top level)'}: {a['why']}")
                  for a in gen.get("left_alone", [])]
        if gen["fused"]:
            lines.append(f"{gen['fused']} already fused")
        if gen["problem"]:
            lines.append("cannot fuse: " + safe(gen["problem"]))
        t.add_row("blocks", "\n".join(lines))


def _artifact(t, r: Dict[str, Any]) -> None:
    from .console import human_bytes, safe

    def io(v: Dict[str, Any]) -> str:
        name = f"{v['name']}: " if v.get("name") else ""
        return safe(f"{name}{v['dtype']} [" + ", ".join(map(str, v["shape"])) + "]")

    t.add_row("file", _path(r))
    t.add_row("format", safe(f"{r['file_format']} for {r['runtime']} "
                             f"({human_bytes(r['size'])})"))
    t.add_row("input", io(r["inputs"][0]))
    t.add_row("output", io(r["outputs"][0]))
    t.add_row("weights", safe(r["weight_dtype"]))
    for k, v in sorted(r["details"].items()):
        t.add_row(safe(k.replace("_", " ")), safe(v))
    t.add_row("runs here", "yes" if r["executes_here"] else
              safe(f"no: {r['runtime']} runs only on macOS; verify reads its weights "
                   f"back"))


def _onnx(t, r: Dict[str, Any]) -> None:
    from .console import human_bytes, safe

    def io(v: Dict[str, Any]) -> str:
        shape = "?" if v["shape"] is None else "[" + ", ".join(map(str, v["shape"])) + "]"
        return safe(f"{v['name']}: {v['dtype']} {shape}")

    t.add_row("file", _path(r))
    t.add_row("format", f"ONNX, IR version {r['ir_version']} ({human_bytes(r['size'])})")
    if r["producer"]:
        t.add_row("producer", safe(r["producer"]))
    t.add_row("opset", ", ".join(f"{safe(d)} {v}" for d, v in r["opsets"].items()) or "none")
    t.add_row("inputs", "\n".join(io(v) for v in r["inputs"]) or "none")
    t.add_row("outputs", "\n".join(io(v) for v in r["outputs"]) or "none")
    t.add_row("initializers", f"{r['initializers']:,} ({r['initializer_elements']:,} values)")
    t.add_row("nodes", f"{r['nodes']:,}")
    t.add_row("checker", "passes" if r["checker"] is None else "FAILS: " + safe(r["checker"]))


def result_line(r: Dict[str, Any]) -> str:
    """The one line ``-q`` prints: what the file is, and its health verdict."""
    if r["kind"] == "onnx":
        return (f"{r['file']}: ONNX, {r['initializers']:,} initializers, {r['nodes']:,} nodes, "
                f"checker {'passes' if r['checker'] is None else 'FAILS'}")
    if r["kind"] == "artifact":
        i, o = r["inputs"][0], r["outputs"][0]
        return (f"{r['file']}: {r['file_format']} for {r['runtime']}, input {i['name']} "
                f"{i['dtype']} {i['shape']}, output {o['shape']}, {r['weight_dtype']} weights")
    if r["kind"] == "mobileone":
        what = (f"MobileOne {r['variant']}, {r['layout']} layout, {r['form']} form, "
                f"{r['keys']:,} keys")
    elif r["kind"] == "damaged":
        what = (f"DAMAGED MobileOne {r['variant']}, {r['layout']} layout, {r['form']} form: "
                + "; ".join(r["damage"]))
    else:
        what = f"not a MobileOne the tool recognises, {r['keys']:,} keys"
    h = r.get("health")
    if h is not None:
        from .health import verdict_line

        what += f"; {verdict_line(h)}"
    return f"{r['file']}: {what}"


def render_inspect(r: Dict[str, Any]) -> None:
    from rich.table import Table

    from .console import console, line, quiet, safe
    from .health import render_health

    out = console()
    if quiet():
        line(out, "", result_line(r), whole=True)
        return
    t = Table(title="mobileone inspect", show_header=False)
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", overflow="fold")
    if r["kind"] in ("onnx", "artifact"):
        (_onnx if r["kind"] == "onnx" else _artifact)(t, r)
        out.print(t)
        return
    _file_rows(t, r)
    {"mobileone": _mobileone, "damaged": _damaged}.get(r["kind"], _checkpoint)(t, r)
    metadata = r.get("metadata") or {}
    # A header may hold a million entries: sorting them all is fine, a row each is not.
    for k in sorted(metadata)[:METADATA_SHOWN]:
        t.add_row(f"metadata.{safe(k, VALUE_SHOWN)}", safe(metadata[k], VALUE_SHOWN))
    if len(metadata) > METADATA_SHOWN:
        t.add_row("metadata", f"... and {len(metadata) - METADATA_SHOWN:,} more entries "
                              f"(--json lists them all)")
    out.print(t)
    if r.get("hint"):
        line(out, "hint:", r["hint"])
    render_health(r.get("health"))
