"""The worker processes of a batch (``convert --jobs N``), and how they stop.

Workers are forked from a forkserver that imported torch once.  Results come back in input
order.  An interrupt (answered by the parent: :mod:`..io.interrupt`) or an error of the batch
itself stops the workers at once: each removes its temp file and exits, and every output a
worker published before its result came back is still recorded as written.  Nothing here
imports torch at import time.
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

from ..io import interrupt
from ..io.published import note_published, published_paths

__all__ = ["convert_in_workers"]


def convert_in_workers(convert_one: Callable[..., Any], pairs: Sequence[Tuple[str, str]],
                       todo: Sequence[int], items: List[Any], options: Any, jobs: int,
                       on_done: Optional[Callable[[int, Any], None]] = None) -> None:
    """``items[i] = convert_one(*pairs[i], options)`` for each i of ``todo``, in ``jobs``
    worker processes."""
    import concurrent.futures
    import multiprocessing

    # forkserver: a fresh process imports torch once (never running a parallel region, so no
    # OpenMP state is forked) and forks every worker from it; spawn would import torch in each.
    ctx: Any
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "mobileone_cli.jobs.convert",
                                    "mobileone_cli.jobs.batch", "mobileone_cli.jobs.batch_workers"])
    else:  # Windows
        ctx = multiprocessing.get_context("spawn")
    before = {i: _on_disk(pairs[i][1]) for i in todo}  # what an interrupt compares against
    done: set = set()
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                                initializer=_init_worker) as pool:
        stop = lambda: _stop_workers(pool, pairs, before, done)  # noqa: E731
        with interrupt.stop_hook(stop):
            futures = {pool.submit(convert_one, pairs[i][0], pairs[i][1], options): i
                       for i in todo}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    i = futures[fut]
                    items[i] = fut.result()
                    with interrupt.lock():
                        done.add(i)
                        if items[i].status == "ok":
                            note_published(items[i].dst)  # written by a worker
                    if on_done:
                        on_done(i, items[i])
            except BaseException:
                with interrupt.lock():
                    stop()
                raise


def _on_disk(path: str) -> Optional[tuple]:
    """What is at ``path`` now (None: nothing), to tell later whether a worker replaced it."""
    try:
        st = os.lstat(path)
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return None


def _stop_workers(pool: Any, pairs: Sequence[Tuple[str, str]], before: dict, done: set) -> None:
    """Stop a batch's worker processes now (an interrupt, or an error of the batch itself): each
    removes its temp file and exits (SIGTERM; SIGKILL after 2 s, its temp files removed here),
    and every output a worker published whose result had not come back yet is recorded in
    the current run's written files (:func:`..io.published.recording_writes`).  Idempotent."""
    import signal
    import time

    from ..io.leftovers import TEMP_PREFIX

    procs = list(getattr(pool, "_processes", {}).values())
    for proc in procs:
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + 2.0
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    folders = {os.path.dirname(os.path.abspath(dst)) for i, (_, dst) in enumerate(pairs)
               if i in before}
    stale = tuple(f"{TEMP_PREFIX}{p.pid}-" for p in procs)
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(stale):
                _remove(os.path.join(folder, name))
    for i in sorted(before):
        dst = pairs[i][1]
        if (i not in done and _on_disk(dst) not in (None, before[i])
                and dst not in published_paths()):
            note_published(dst)
    pool.shutdown(wait=False, cancel_futures=True)
    if interrupt.interrupted():  # the process exits next, skipping its exit handlers: release
        from multiprocessing import util  # the pool's semaphores now (else a warning on exit)

        util._run_finalizers(0)  # type: ignore[attr-defined]  # private, no stub


def _remove(path: str) -> None:
    import shutil

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def _init_worker() -> None:
    """One compute thread per worker: workers on all cores with several threads each would spin
    against each other.  Signals: the parent answers Ctrl-C and a closed terminal (it stops the
    workers with SIGTERM), so a worker ignores SIGINT and SIGHUP (no traceback of its own) and
    on SIGTERM removes its temp file and exits."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_stop)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _worker_stop(signum, frame) -> None:
    interrupt.abort(timeout=1.0)
    os._exit(130)
