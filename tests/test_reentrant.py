"""The library keeps no per-run state in module globals: what a run prints and what it wrote
belong to its own context, so nested runs and runs in other threads do not see each other's."""
from __future__ import annotations

import threading

import mobileone_cli.io.write as write
import mobileone_cli.render.console as console
from mobileone_cli.io.write import atomic_write, recording_writes
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
