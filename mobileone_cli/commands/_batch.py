"""Batch mode of ``mobileone convert`` (several SRCs, or folders): progress bar, table, exit
code."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import click


def run_batch(sources: Sequence[str], dst: str, options: Any, as_json: bool, *, suffix: str = "",
              template: Optional[str] = None, skip_existing: bool = False,
              jobs: Optional[int] = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..jobs.batch import batch_exit_code, convert_many, default_jobs, plan_batch
    from ..render.batch import batch_to_dict, render_batch
    from ..render.console import console, emit, quiet, safe

    pairs = plan_batch(sources, dst, suffix=suffix, template=template)
    with Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), console=console(stderr=True),
                  transient=True, disable=quiet()) as bar:
        task = bar.add_task("", total=len(pairs))
        items = convert_many(
            pairs, options, jobs=jobs or default_jobs(len(pairs)), skip_existing=skip_existing,
            on_start=lambda i, src: bar.update(task, description=safe(src)),
            on_done=lambda i, item: bar.update(task, advance=1, description=safe(item.src)))
    emit(items, as_json, batch_to_dict, render_batch)
    code = batch_exit_code(items)
    if code:
        raise click.exceptions.Exit(code)
    return 0
