"""What an interrupt (Ctrl-C, SIGTERM, SIGHUP) must undo, known to whoever handles it.

The command line runs a command's work in a thread and waits for it in the main thread, which
alone receives signals: a long native call (a convolution, an exporter) cannot delay the
answer.  On a signal the main thread calls :func:`abort`, which, holding the lock every write
takes to create or publish a file:

* marks the run interrupted (a write that comes after publishes nothing),
* runs the stop hooks (a batch stops its worker processes and records what they wrote), each
  in the context of the code that registered it: the main thread answers for the work thread,
  and what the work records lives in context variables (:func:`.published.recording_writes`),
* removes every temp file and folder still registered.

What is published is recorded (:func:`.published.note_published`) under the same lock, so the list
an interrupt prints is exact.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import threading
from typing import Callable, Iterator, List, Tuple

__all__ = ["lock", "interrupted", "abort", "register_temp", "forget_temp", "stop_hook",
           "wraps_interrupt", "reset"]

_lock = threading.RLock()
_state = {"interrupted": False}
_temps: List[str] = []
_hooks: List[Tuple[Callable[[], None], contextvars.Context]] = []


@contextlib.contextmanager
def lock() -> Iterator[None]:
    """Held while a file is created or published; raises KeyboardInterrupt once interrupted
    (nothing is created or published after the interrupt was answered)."""
    with _lock:
        if _state["interrupted"]:
            raise KeyboardInterrupt
        yield


def interrupted() -> bool:
    return _state["interrupted"]


def register_temp(path: str) -> None:
    """``path`` (a temp file or folder) is removed if the run is interrupted before
    :func:`forget_temp`."""
    with _lock:
        _temps.append(path)


def forget_temp(path: str) -> None:
    with _lock:
        if path in _temps:
            _temps.remove(path)


@contextlib.contextmanager
def stop_hook(hook: Callable[[], None]) -> Iterator[None]:
    """While the block runs, an interrupt calls ``hook`` (before the temp files go), in this
    block's context whichever thread answers the interrupt."""
    entry = (hook, contextvars.copy_context())
    with _lock:
        _hooks.append(entry)
    try:
        yield
    finally:
        with _lock:
            _hooks[:] = [e for e in _hooks if e is not entry]


def abort(timeout: float = 5.0) -> None:
    """Answer an interrupt: no more publishing, stop hooks, temp files removed.  Leaves the
    lock held (the process exits next) when it could take it within ``timeout`` seconds."""
    _lock.acquire(timeout=timeout)
    _state["interrupted"] = True
    for hook, context in list(_hooks):
        try:
            context.copy().run(hook)
        except Exception:  # an interrupt is answered whatever a hook meets
            pass
    for path in list(_temps):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass
    _temps.clear()


def wraps_interrupt(exc: BaseException) -> bool:
    """A Ctrl-C that reached Python code called by a native writer (torch's zip writer calls
    the file's write) comes back wrapped in the writer's own error: it is still an interrupt."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc)[:2000]:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def reset() -> None:
    """A fresh start (a new command in this process, a new worker)."""
    with _lock:
        _state["interrupted"] = False
        _temps.clear()
        _hooks.clear()
