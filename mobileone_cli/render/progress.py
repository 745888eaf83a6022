"""The one progress display of the tool: a transient line on stderr while a slow step runs.

Jobs name their steps (:mod:`mobileone_cli.timing`: loading, fusion, each check pass, each
export stage, the runtime check, the quantization passes); :func:`shown` listens to them and
draws ``⠋ check › float64 referee  0:00:12`` on stderr, and :func:`counter` draws a bar for a
loop that knows its length (eval's images).  Nothing is drawn unless stderr is a terminal, nor
under ``-q`` or ``--json`` (the CLI decides, :func:`shown`'s ``enabled``): logs, pipes and
captured output stay clean, and stdout never carries progress.  The display is erased when the
last step ends, before anything is printed to stdout.
"""
from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["shown", "counter", "StepProgress"]

# The display :func:`shown` installed for this run, if any (nested or concurrent runs: their own).
_ACTIVE: ContextVar[Optional["StepProgress"]] = ContextVar("mobileone_progress", default=None)


class StepProgress:
    """A step listener (``timing.listening``) drawing the running steps on ``out``."""

    def __init__(self, out) -> None:
        self.out = out
        self.stack: List[str] = []
        self.counters = 0  # bars of counter() alive: the display stays while they count
        self.bar: Optional[Progress] = None  # drawn while a step runs or a counter counts
        self.task: Optional[TaskID] = None

    def _start(self) -> Progress:
        if self.bar is not None:
            return self.bar
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        # No stdout/stderr redirection: a report printed meanwhile goes where it belongs.
        bar = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                       BarColumn(bar_width=24), TextColumn("{task.fields[count]}"),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                       console=self.out, transient=True, redirect_stdout=False,
                       redirect_stderr=False)
        bar.start()
        self.bar, self.task = bar, bar.add_task("", total=None, rate="", count="")
        return bar

    def _stop(self) -> None:
        if self.bar is not None and not self.stack and not self.counters:
            self.bar.stop()
            self.bar = None
            self.task = None

    def _describe(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, description=" › ".join(self.stack),
                            visible=bool(self.stack))
            self.bar.refresh()  # a step is drawn when it starts, however short

    def __call__(self, event: str, name: str) -> None:
        if event == "start":
            self.stack.append(name)
            self._start()
        elif name in self.stack:
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(name)]
        self._describe()
        self._stop()

    @contextlib.contextmanager
    def count(self, label: str, unit: str) -> Iterator[Callable[[int, int], None]]:
        """A bar of ``label``: the callback takes (done, total) and shows units per second."""
        self.counters += 1
        bar = self._start()  # stays while this counter counts (self.counters)
        task: List[Any] = []
        start: List[float] = []

        def update(done: int, total: int) -> None:
            if not task:
                task.append(bar.add_task(label, total=total, rate="", count=""))
                start.append(time.perf_counter())
            elapsed = time.perf_counter() - start[0]
            rate = f"{done / elapsed:.1f} {unit}/s" if done and elapsed > 0 else ""
            bar.update(task[0], completed=done, total=total, rate=rate,
                       count=f"{done}/{total}")
            bar.refresh()

        try:
            yield update
        finally:
            if task and self.bar is not None:
                self.bar.remove_task(task[0])
            self.counters -= 1
            self._stop()


def _stderr():
    """The stderr console, or None when stderr is not a real terminal: FORCE_COLOR asks for
    colour, not for a live display drawn into a log or a pipe."""
    import sys

    from .console import console

    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return console(stderr=True) if tty else None


@contextlib.contextmanager
def shown(enabled: bool = True, out=None) -> Iterator[Optional[StepProgress]]:
    """Draw the steps of whatever runs inside, on ``out`` (default: stderr) when it is a
    terminal and ``enabled`` (the CLI passes False for ``-q`` and ``--json``)."""
    from ..timing import listening

    out = out if out is not None else _stderr()
    display = StepProgress(out) if enabled and out is not None and out.is_terminal else None
    token = _ACTIVE.set(display)  # None: an outer run's display stays off for this block
    try:
        with listening(display):
            yield display
    finally:
        _ACTIVE.reset(token)
        if display is not None:
            display.stack.clear()
            display.counters = 0
            display._stop()


@contextlib.contextmanager
def counter(label: str, unit: str = "items",
            enabled: bool = True) -> Iterator[Optional[Callable[[int, int], None]]]:
    """A (done, total) callback drawing a bar in the display :func:`shown` installed, or in one
    of its own on a terminal stderr; None when nothing is drawn."""
    if not enabled:
        yield None
        return
    active = _ACTIVE.get()
    if active is not None:
        with active.count(label, unit) as update:
            yield update
        return
    with shown(True) as display:
        if display is None:
            yield None
            return
        with display.count(label, unit) as update:
            yield update
