"""Batch mode of ``mobileone convert`` (several SRCs, or folders): progress bar, table, exit
code."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import click


def run_batch(sources: Sequence[str], dst: str, options: Any, as_json: bool, *, suffix: str = "",
              template: Optional[str] = None, skip_existing: bool = False,
              jobs: Optional[int] = None) -> int:
    from ..jobs.batch import batch_exit_code, convert_many, default_jobs, plan_batch
    from ..render.batch import batch_to_dict, render_batch
    from ..render.console import emit, quiet
    from ..render.progress import counter

    pairs = plan_batch(sources, dst, suffix=suffix, template=template)
    done = [0]
    with counter("converting", unit="files", enabled=not quiet() and not as_json) as update:
        def advance(i: int, item: Any) -> None:
            done[0] += 1
            if update is not None:
                update(done[0], len(pairs))

        if update is not None:
            update(0, len(pairs))
        items = convert_many(pairs, options, jobs=jobs or default_jobs(len(pairs)),
                             skip_existing=skip_existing, on_done=advance)
    emit(items, as_json, batch_to_dict, render_batch)
    code = batch_exit_code(items)
    if code:
        raise click.exceptions.Exit(code)
    return 0
