"""The one console of the tool and the small formatting rules every table shares.

Rendering takes plain data and prints; nothing under ``render/`` computes a result or imports
torch.  Text that comes from the user or from a file (paths, keys, metadata, messages quoted from
files) goes through :func:`safe`: rich markup escaped, control characters shown escaped.

Width: every command prints at the same width (:func:`width`): ``COLUMNS`` when set, else the
terminal's, else 80 (output piped to a file or a program), at most :data:`MAX_WIDTH`.  Tables fit
it; prose (notes, hints, legends) is wrapped to it by :func:`line`; the one-line verdicts
(``PASS:``/``FAIL:``, convert's ``check:``) and ``error:`` lines are never wrapped (grep-able).

Verbosity (``-q``/``-v``): :func:`quiet` renderers print only their one-line result;
:func:`verbose` renderers add step timings and every per-block row.  It belongs to one command
run, an :class:`Output` the CLI opens with :func:`output_session` (a context variable, so runs in
other threads or nested runs each see their own); outside a session output is NORMAL and nothing
is recorded.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional

from ..rules.dtypes import human_bytes

__all__ = ["console", "width", "MAX_WIDTH", "fmt_rel", "emit", "shorten_middle", "shorten_path",
           "human_bytes", "compact", "safe", "line", "Output", "output_session",
           "verbosity", "quiet", "verbose", "QUIET", "NORMAL", "VERBOSE",
           "fmt_seconds", "render_timings", "timings_json", "MAX_SHOWN", "json_text", "json_safe"]

MAX_SHOWN = 1000  # characters of one user- or file-derived string in a table or a line

MAX_WIDTH = 120  # wider terminals get tables of this width at most: lines stay readable
DEFAULT_WIDTH = 80  # output that is not a terminal, without COLUMNS

QUIET, NORMAL, VERBOSE = -1, 0, 1


@dataclass
class Output:
    """The output of one command run: how much to print, and how many JSON documents were
    printed (a failing command whose report already went out as JSON prints no second one)."""

    verbosity: int = NORMAL
    json_documents: int = 0


_OUTPUT: ContextVar[Optional[Output]] = ContextVar("mobileone_output", default=None)


@contextlib.contextmanager
def output_session(level: int = NORMAL) -> Iterator[Output]:
    """One command run printing at QUIET (-q), NORMAL or VERBOSE (-v)."""
    state = Output(verbosity=max(QUIET, min(VERBOSE, int(level))))
    token = _OUTPUT.set(state)
    try:
        yield state
    finally:
        _OUTPUT.reset(token)


def verbosity() -> int:
    state = _OUTPUT.get()
    return NORMAL if state is None else state.verbosity


def quiet() -> bool:
    return verbosity() <= QUIET


def verbose() -> bool:
    return verbosity() >= VERBOSE


def width(stderr: bool = False) -> int:
    """Columns to print in: ``COLUMNS``, else the terminal's (of stdout, or stderr), else 80;
    at most MAX_WIDTH.  The same rule for every command, on a terminal or not."""
    import sys

    cols = os.environ.get("COLUMNS", "").strip()
    if cols.isascii() and cols.isdigit() and int(cols) > 0:  # not '²', which isdigit() too
        return min(int(cols), MAX_WIDTH)
    stream = sys.stderr if stderr else sys.stdout
    try:
        if stream.isatty():
            return min(os.get_terminal_size(stream.fileno()).columns or DEFAULT_WIDTH, MAX_WIDTH)
    except (AttributeError, OSError, ValueError):  # a replaced stream (tests, notebooks)
        pass
    return DEFAULT_WIDTH


def console(stderr: bool = False):
    """A rich Console of :func:`width` columns."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width(stderr),
                   _environ=_sizes_checked(os.environ))


def _sizes_checked(environ) -> Dict[str, str]:
    """The environment without a COLUMNS or LINES that is not a plain number ('²' is a digit
    to Python, not to int()): rich would fail on it."""
    def usable(value: str) -> bool:
        value = value.strip()
        return value.isascii() and value.isdigit()

    return {k: v for k, v in environ.items() if k not in ("COLUMNS", "LINES") or usable(v)}


def safe(text: object, width: Optional[int] = None) -> str:
    """User- or file-derived text for a rich string: printable, one line, markup escaped, and
    at most ``width`` characters (a file may hold a megabyte-long key)."""
    from rich.markup import escape

    from ..errors import one_line

    return escape(one_line(text, width) if width else one_line(text, MAX_SHOWN))


def line(out, head: str, body: object = "", *, whole: bool = False) -> None:
    """Print ``head body`` (a note, a hint, a legend): ``head`` is rich markup (already safe),
    ``body`` plain text (made printable here).  Wrapped at the console's width at spaces, the
    next lines indented by two; ``whole`` keeps it one line (the verdicts)."""
    import re
    import textwrap

    from rich.text import Text

    from ..errors import printable

    head_text = Text.from_markup(head)
    body = printable(body)
    plain = head_text.plain + (" " if head_text.plain and body else "") + body
    if whole or len(plain) <= out.width:
        out.print(head_text + Text(plain[len(head_text.plain):]), soft_wrap=True)
        return
    # A command in backticks (`mobileone convert --generic SRC DST`) is kept on one line, and a
    # word longer than a line (a long path) stays whole on a line of its own: both are copied
    # and pasted, so a line break inside them would break them.
    glued = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\x00"), plain)
    rows = [r.replace("\x00", " ") for r in
            textwrap.wrap(glued, width=out.width, subsequent_indent="  ",
                          break_long_words=False, break_on_hyphens=False)] or [""]
    if rows[0].startswith(head_text.plain):
        out.print(head_text + Text(rows[0][len(head_text.plain):]), soft_wrap=True)
    else:  # a head wider than the console: plain text
        out.print(Text(rows[0]), soft_wrap=True)
    for row in rows[1:]:
        out.print(Text(row), soft_wrap=True)


def compact(n: int) -> str:
    """An integer in 3 significant digits with an SI suffix: 4825192 -> '4.83 M',
    1304027392 -> '1.30 G'; below 1000 as is.  (--json and --exact keep every digit.)"""
    if abs(n) < 1000:
        return f"{n:d}"
    for unit, div in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        v = n / div
        if abs(v) < 999.5 or unit == "T":
            digits = 2 if abs(v) < 9.995 else 1 if abs(v) < 99.95 else 0
            return f"{v:.{digits}f} {unit}"
    return f"{n:d}"  # pragma: no cover


def fmt_rel(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def fmt_seconds(s: float) -> str:
    return f"{s:.2f} s"


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters ('runs/...h_30.pth'): the start says
    where, the end says which."""
    if len(text) <= width or width < 5:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def shorten_path(path: str, width: int) -> str:
    """A path cut to ``width`` characters in its folders, keeping the file name whole when it
    fits ('/tmp/run…/epoch_30.pth'); a name too long is cut in its middle."""
    if len(path) <= width:
        return path
    name = os.path.basename(path)
    tail = path[len(path) - len(name) - 1:] if len(name) < len(path) else name
    if len(tail) + 4 <= width:
        return path[:width - len(tail) - 1] + "…" + tail
    return shorten_middle(path, width)


def render_timings(out, timings: Optional[Dict[str, float]]) -> None:
    """``steps: load 120 ms, detect 3 ms, ...`` (verbose): where the time of a command went."""
    if not verbose() or not timings:
        return
    total = sum(timings.values())
    line(out, "[bold]steps:[/]", ", ".join(f"{k} {fmt_seconds(v)}" for k, v in timings.items())
         + f" (total {fmt_seconds(total)})")


def timings_json(timings: Optional[Dict[str, float]]) -> Dict[str, Any]:
    """``{"timings_s": {...}}`` under ``-v``, else nothing: a report's JSON stays the same from
    one run to the next unless timings are asked for."""
    return {"timings_s": dict(timings)} if verbose() and timings else {}


def json_safe(value: Any) -> Any:
    """``value`` with every string valid Unicode: a file name that is not valid UTF-8 (Python
    holds its bytes as lone surrogates) shows them as ``\\xff`` text, so every JSON parser
    reads the document."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                           else f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c
                           for c in value)
    if isinstance(value, dict):
        return {json_safe(k) if isinstance(k, str) else k: json_safe(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(document: Any) -> str:
    """The tool's JSON: indented, ASCII, always valid (see :func:`json_safe`)."""
    return json.dumps(json_safe(document), indent=2, default=lambda o: json_safe(str(o)))


def emit(result: Any, as_json: bool, to_dict: Callable[[Any], Dict[str, Any]],
         render: Callable[..., None], **render_options: Any) -> None:
    """The one output path: ``to_dict(result)`` as JSON on stdout, or ``render(result)``."""
    if as_json:
        import click

        click.echo(json_text(to_dict(result)))
        state = _OUTPUT.get()
        if state is not None:
            state.json_documents += 1
    else:
        render(result, **render_options)
