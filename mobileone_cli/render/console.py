"""The one console of the tool and the small formatting rules every table shares.

Rendering takes plain data and prints; nothing under ``render/`` computes a result or imports
torch.  Text that comes from the user or from a file (paths, keys, metadata, messages quoted from
files) goes through :func:`safe`: rich markup escaped, control characters shown escaped.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, Optional

__all__ = ["console", "fmt_rel", "emit", "short_path", "shorten_middle", "human_bytes", "safe",
           "json_emitted", "MAX_SHOWN"]

MAX_SHOWN = 1000  # characters of one user- or file-derived string in a table or a line

_emitted = []  # JSON documents printed by this process (the CLI prints at most one)


def json_emitted() -> bool:
    """Whether a JSON document has been printed (a failing command's report already says it)."""
    return bool(_emitted)


def reset_emitted() -> None:
    """Start of a command: nothing printed yet (the API and tests run many in one process)."""
    _emitted.clear()


def console(stderr: bool = False, min_width: int = 0):
    """A rich Console: the terminal's width, or ``COLUMNS``, or 80 when output is not a terminal
    (rich's own rule); ``min_width`` widens a console that does not write to a terminal."""
    from rich.console import Console

    c = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if min_width and not c.is_terminal and c.width < min_width:
        c = Console(stderr=stderr, highlight=False, soft_wrap=False, width=min_width)
    return c


def safe(text: object, width: Optional[int] = None) -> str:
    """User- or file-derived text for a rich string: printable, one line, markup escaped, and
    at most ``width`` characters (a file may hold a megabyte-long key)."""
    from rich.markup import escape

    from ..errors import one_line

    return escape(one_line(text, width) if width else one_line(text, MAX_SHOWN))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000.0
    return f"{n:.1f} GB"


def fmt_rel(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters ('runs/...h_30.pth'): the start says
    where, the end says which."""
    if len(text) <= width or width < 5:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def short_path(path: str, width: int = 28) -> str:
    """The path as given when it fits a table column, else its file name (the user typed it)."""
    import os

    return path if len(path) <= width else os.path.basename(path)


def emit(result: Any, as_json: bool, to_dict: Callable[[Any], Dict[str, Any]],
         render: Callable[..., None], **render_options: Any) -> None:
    """The one output path: ``to_dict(result)`` as JSON on stdout, or ``render(result)``."""
    if as_json:
        import click

        click.echo(json.dumps(to_dict(result), indent=2, default=str))
        _emitted.append(True)
    else:
        render(result, **render_options)


