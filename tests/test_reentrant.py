"""The library keeps no per-run state in module globals: what a run prints and what it wrote
belong to its own context, so nested runs and runs in other threads do not see each other's."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import mobileone_cli.io.write as write
import mobileone_cli.render.console as console
from mobileone_cli.io.published import recording_writes
from mobileone_cli.io.write import atomic_write
from mobileone_cli.render.console import NORMAL, QUIET, VERBOSE, output_session, quiet, verbose


def _write(path: str) -> None:
    atomic_write(path, lambda tmp: open(tmp, "wb").write(b"x"))


def test_nested_runs_keep_their_own_verbosity_and_files(tmp_path):
    """A run inside a run prints at its own verbosity and records its files; the outer run
    records them too (they were written while it ran)."""
    assert console.verbosity() == NORMAL
    with output_session(QUIET) as outer, recording_writes() as outer_written:
        _write(str(tmp_path / "a"))
        with output_session(VERBOSE), recording_writes() as inner_written:
            assert verbose() and not quiet()
            _write(str(tmp_path / "b"))
        assert quiet() and outer.verbosity == QUIET
        _write(str(tmp_path / "c"))
    # the outer run wrote b too (through the inner one); the inner one only b
    assert outer_written == [str(tmp_path / n) for n in "abc"]
    assert inner_written == [str(tmp_path / "b")]
    assert console.verbosity() == NORMAL
    _write(str(tmp_path / "d"))  # outside a run: written, recorded nowhere
    assert (tmp_path / "d").read_bytes() == b"x"
    assert not hasattr(write, "published") and not hasattr(console, "_state")


def test_json_documents_are_counted_per_run(capsys):
    with output_session() as run:
        console.emit({"a": 1}, True, dict, None)
        with output_session() as nested:
            pass
    assert run.json_documents == 1 and nested.json_documents == 0
    assert capsys.readouterr().out.strip().startswith("{")


def test_concurrent_runs_see_their_own_settings(tmp_path):
    barrier = threading.Barrier(2)
    seen = {}

    def run(level: int, name: str) -> None:
        with output_session(level), recording_writes() as written:
            barrier.wait()  # both sessions open at once
            _write(str(tmp_path / name))
            barrier.wait()
            seen[name] = (quiet(), verbose(), list(written))

    threads = [threading.Thread(target=run, args=(QUIET, "q")),
               threading.Thread(target=run, args=(VERBOSE, "v"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"q": (True, False, [str(tmp_path / "q")]),
                    "v": (False, True, [str(tmp_path / "v")])}


def test_a_stop_hook_records_into_the_run_that_registered_it(tmp_path):
    """The main thread answers a signal for the work thread: a stop hook it runs (a batch
    recording what its workers published) must record into the work's run, not into the main
    thread's context, where no run is open."""
    script = """if True:
        import threading
        from mobileone_cli.io import interrupt
        from mobileone_cli.io.published import note_published, recording_writes
        written, ready, never = [], threading.Event(), threading.Event()
        def work():
            with recording_writes(into=written):
                with interrupt.stop_hook(lambda: note_published("by-a-worker.pth")):
                    ready.set()
                    never.wait()
        threading.Thread(target=work, daemon=True).start()
        ready.wait()
        interrupt.abort()
        print(written)
    """
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['by-a-worker.pth']"
