"""Output of ``fetch`` (what came, from where, its sha256, where it is) and of ``fetch --list``;
and the download bar every command shows while it fetches a name (stderr, terminals only)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional

from .console import console, human_bytes, line, quiet, safe

__all__ = ["fetch_to_dict", "render_fetch", "known_to_dict", "render_known", "download_bar",
           "render_fetched_note"]


def _fetched_dict(f) -> Dict[str, Any]:
    k = f.known
    return {"name": f.name, "status": f.status, "source": f.source, "url": f.url, "path": f.path,
            "size": f.size, "sha256": f.sha256,
            "layout": k.layout if k else None, "form": k.form if k else None,
            "variant": k.variant if k else None}


def fetch_to_dict(report) -> Dict[str, Any]:
    return {"cache": report.cache, "files": [_fetched_dict(f) for f in report.fetched]}


def render_fetch(report) -> None:
    from rich import box
    from rich.table import Table

    out = console()
    if quiet():
        for f in report.fetched:
            line(out, "", f"{f.name}: {f.path}", whole=True)
        return
    t = Table(box=box.SIMPLE, header_style="bold", pad_edge=False, show_edge=False)
    for col in ("name", "status", "size", "sha256"):
        t.add_column(col, no_wrap=True, justify="right" if col == "size" else "left")
    for f in report.fetched:
        t.add_row(safe(f.name), f.status, human_bytes(f.size), f.sha256[:16] + "…")
    out.print(t)
    for f in report.fetched:
        line(out, f"[bold]{safe(f.name)}:[/]", f.path)
    line(out, "", f"cache: {report.cache}")


def known_to_dict(lst) -> Dict[str, Any]:
    return {"cache": lst.cache, "names": [
        {"name": r.known.name, "source": r.known.source, "variant": r.known.variant,
         "layout": r.known.layout, "form": r.known.form, "file": r.known.file, "url": r.url,
         "sha256_prefix": r.known.sha256_prefix, "cached": r.cached} for r in lst.rows]}


def render_known(lst) -> None:
    from rich import box
    from rich.table import Table

    out = console()
    if quiet():
        for r in lst.rows:
            line(out, "", r.known.name, whole=True)
        return
    t = Table(box=box.SIMPLE, header_style="bold", pad_edge=False, show_edge=False)
    for col in ("name", "variant", "layout", "form", "sha256", "cached"):
        t.add_column(col, no_wrap=True)
    for r in lst.rows:
        k = r.known
        t.add_row(k.name, k.variant, k.layout, k.form, (k.sha256_prefix + "…")
                  if k.sha256_prefix else "-", "yes" if r.cached else "-")
    out.print(t)
    line(out, "", "train: unfused, as trained; deploy: fused. sha256: the prefix the publisher "
                  "states, checked on download. Also: hf-hub:OWNER/REPO[@REV][/FILE] and "
                  "https:// addresses.")
    line(out, "", f"cache: {lst.cache}")


def render_fetched_note(fetched) -> None:
    """One line on stderr when a command downloaded a name (nothing when it was cached)."""
    if quiet() or fetched.status == "cached":
        return
    line(console(stderr=True), "", f"{fetched.status} {fetched.name} "
                                   f"({human_bytes(fetched.size)}, sha256 "
                                   f"{fetched.sha256[:16]}…) into {fetched.path}")


def download_bar(enabled: bool = True) -> Callable[[str], Any]:
    """A factory ``label -> context`` giving a ``(done, total)`` callback that draws a download
    bar on stderr, when stderr is a terminal (else None: logs stay clean)."""

    @contextlib.contextmanager
    def bar(label: str) -> Iterator[Optional[Callable[[int, Optional[int]], None]]]:
        err = console(stderr=True)
        if not enabled or quiet() or not err.is_terminal:
            yield None
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                      transient=True) as progress:
            task = progress.add_task(safe(label, 40), total=None)

            def update(done: int, total: Optional[int]) -> None:
                progress.update(task, completed=done, total=total)

            yield update

    return bar
