"""Batch mode of ``mobileone convert`` (several SRCs, or folders): progress bar, table, exit code."""
from __future__ import annotations

from typing import Any, Sequence

import click


def run_batch(sources: Sequence[str], dst: str, options: Any, as_json: bool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..batch import batch_exit_code, convert_many, plan_batch
    from ..render.batch import batch_to_dict, render_batch
    from ..render.console import console, emit, safe

    pairs = plan_batch(sources, dst)
    with Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), console=console(stderr=True),
                  transient=True) as bar:
        task = bar.add_task("", total=len(pairs))
        items = convert_many(
            pairs, options, on_start=lambda i, src: bar.update(task, description=safe(src)),
            on_done=lambda i, item: bar.advance(task))
    emit(items, as_json, batch_to_dict, render_batch)
    code = batch_exit_code(items)
    if code:
        raise click.exceptions.Exit(code)
    return 0
