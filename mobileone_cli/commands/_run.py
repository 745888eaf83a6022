"""How the command line runs a command so that a signal is answered at once, whatever the work.

Python runs signal handlers only in the main thread, between bytecodes: a command working in the
main thread answers Ctrl-C or SIGTERM only when a native call returns (a large convolution, an
exporter, an unbounded computation asked for by a hostile file: minutes).  So the work runs in a
thread and the main thread only waits.  On SIGINT, SIGTERM or SIGHUP the main thread, within a
fraction of a second: drops further output of the work, answers the interrupt
(:func:`..io.interrupt.abort`: nothing more is published, worker processes are stopped, temp
files removed), prints ``interrupted; nothing was written`` or ``interrupted; already written:
...`` (exact: publishing and recording happen under one lock), and exits 130 at once, the work
thread with it.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable, Dict

from ..errors import EXIT_INTERRUPTED, one_line

__all__ = ["run_interruptibly", "SIGNALS"]

SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None),
                            getattr(signal, "SIGHUP", None)) if s is not None)
POLL_S = 0.2


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_interruptibly(work: Callable[[], Any], written: Callable[[], str]) -> Any:
    """``work()`` in a thread; its result or exception (SystemExit included) comes back here.
    A signal ends the process with exit 130 (``written()`` says what was published)."""
    if threading.current_thread() is not threading.main_thread():
        return work()  # signals cannot be handled here: run as is
    try:
        for sig in SIGNALS:
            signal.signal(sig, _raise_interrupt)
    except (ValueError, OSError):
        return work()
    outcome: Dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # SystemExit: the exit code of the command
            outcome["error"] = exc

    thread = threading.Thread(target=body, name="mobileone-work", daemon=True)
    try:
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
    except KeyboardInterrupt:
        _answer(written)
    finally:
        # The work is done (or reported): a signal during interpreter exit must not print a
        # traceback over the result or change the exit code.
        for sig in SIGNALS:
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (ValueError, OSError):
                pass
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _answer(written: Callable[[], str]) -> None:
    """Stop everything, say what was written, exit 130 (never returns)."""
    from ..io.interrupt import abort

    for sig in SIGNALS:  # a second Ctrl-C must not cut the answer short
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    _silence(sys.stdout)
    _silence(sys.stderr)
    abort()
    message = one_line(f"interrupted; {written()}") + "\n"
    try:
        if os.isatty(2):
            message = "\x1b[?25h\r" + message  # a progress bar hid the cursor: show it again
        os.write(2, message.encode("utf-8", "backslashreplace"))
    except OSError:
        pass
    os._exit(EXIT_INTERRUPTED)  # the work thread ends with the process


def _silence(stream: Any) -> None:
    """No more output from the work thread (a worker's failure must not be printed as the
    command's error after the interrupt)."""
    drop = getattr(stream, "drop", None)
    if drop is not None:
        drop()
