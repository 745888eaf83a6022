"""Progress of slow steps: drawn on a terminal stderr, never on stdout, nor with -q or --json."""
from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from mobileone_cli.render import progress as progress_mod
from mobileone_cli.timing import Steps, listener


def _tty():
    buf = io.StringIO()
    return buf, Console(file=buf, force_terminal=True, width=80)


def test_steps_are_drawn_on_a_terminal_and_nothing_elsewhere():
    buf, tty = _tty()
    with progress_mod.shown(True, out=tty):
        steps = Steps()
        with steps("load"):
            with steps("fp32 pass"):
                time.sleep(0.05)
    assert "load › fp32 pass" in buf.getvalue()
    assert listener() is None  # the listener is gone with the display
    assert set(steps.seconds) == {"load", "fp32 pass"}

    for enabled, out in ((False, tty), (True, Console(file=io.StringIO(), force_terminal=False))):
        with progress_mod.shown(enabled, out=out) as display:
            assert display is None and listener() is None


def test_a_display_belongs_to_its_own_run():
    """The display is a context variable: a nested quiet run and another thread draw nothing
    into it, and its steps are told only to it."""
    import threading

    buf, tty = _tty()
    seen = []
    with progress_mod.shown(True, out=tty) as outer:
        assert listener() is outer
        with progress_mod.shown(False, out=tty) as inner:  # a nested -q/--json run
            assert inner is None and listener() is None
            with Steps()("nested step"):
                pass
        worker = threading.Thread(target=lambda: seen.append(listener()))
        worker.start()
        worker.join()
        assert listener() is outer
    assert seen == [None]
    assert "nested step" not in buf.getvalue()


def test_counter_draws_a_bar_in_the_shared_display():
    buf, tty = _tty()
    with progress_mod.shown(True, out=tty):
        with progress_mod.counter("eval", unit="images") as update:
            update(0, 4)
            update(4, 4)
            tty.file.flush()
    assert "eval" in buf.getvalue() and "4/4" in buf.getvalue()


@pytest.fixture
def fake_tty(monkeypatch):
    buf, tty = _tty()
    monkeypatch.setattr(progress_mod, "_stderr", lambda: tty)
    return buf


@pytest.mark.slow
def test_cli_verify_draws_its_passes_on_stderr_only(fake_tty, write_ckpt, run_cli):
    train = write_ckpt("s0")
    args = ("verify", train, "--input-size", "64", "--batch", "1")
    res = run_cli(*args)
    assert res.exit_code == 0
    drawn = fake_tty.getvalue()
    for name in ("load", "fuse", "check › fp32 pass"):
        assert name in drawn
    assert "fp32 pass" not in res.stdout and "›" not in res.output

    for flag in ("-q", "--json"):
        fake_tty.seek(0)
        fake_tty.truncate()
        res = run_cli(flag, *args) if flag == "-q" else run_cli(*args, flag)
        assert res.exit_code == 0 and fake_tty.getvalue() == ""
