"""One exit-code policy (errors.exit_code_of) for the CLI and batch rows, and the loader's line
between a bad file (exit 2) and a bug in the loader itself (exit 3)."""
from __future__ import annotations

import os

import pytest
import torch

from mobileone_cli.errors import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_MISMATCH,
                                  BadInput, VerificationFailed, exit_code_of, raised_in_package)

from .hostile import assert_refused


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("exc, code", [
    (BadInput("x"), EXIT_BAD_INPUT), (VerificationFailed("x"), EXIT_MISMATCH),
    (KeyboardInterrupt(), EXIT_INTERRUPTED), (MemoryError(), EXIT_BAD_INPUT),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"),
     EXIT_BAD_INPUT),
    (RuntimeError("shape mismatch"), EXIT_INTERNAL), (AttributeError("x"), EXIT_INTERNAL)])
def test_exit_code_of(exc, code):
    assert exit_code_of(exc) == code


def test_raised_in_package_looks_at_the_innermost_frame():
    from mobileone_cli.rules.limits import parse_input_size

    try:
        torch.zeros(2).view(3)  # raised inside torch
    except RuntimeError as exc:
        assert not raised_in_package(exc)
    try:
        parse_input_size("x")  # raised by this package
    except BadInput as exc:
        assert raised_in_package(exc)
    assert not raised_in_package(ValueError("never raised"))


def _loader_bug(monkeypatch):
    """Make the weights-only loader itself fail with a TypeError raised in its own code."""
    import mobileone_cli.io.safeload as safeload

    monkeypatch.setattr(safeload, "_unsafe_globals", lambda path: None)


def test_a_loader_bug_exits_3_not_2(tmp_path, tiny_sd, run_cli, monkeypatch):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    _loader_bug(monkeypatch)
    dst = str(tmp_path / "o.pth")
    res = run_cli("convert", str(src), dst)
    assert res.exit_code == EXIT_INTERNAL, res.output
    assert "internal error: TypeError" in res.stderr and "bug" in res.stderr
    assert not os.path.exists(dst)


def test_a_damaged_file_still_exits_2(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "cut.pth"
    torch.save(tiny_sd, src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "cut.pth")


def test_batch_rows_follow_the_same_policy(tmp_path, tiny_sd, monkeypatch):
    from mobileone_cli.jobs.batch import batch_exit_code, convert_many

    good, cut = tmp_path / "good.pth", tmp_path / "cut.pth"
    torch.save(tiny_sd, good)
    cut.write_bytes(good.read_bytes()[:100])
    items = convert_many([(str(cut), str(tmp_path / "out" / "cut.pth"))])
    assert [(it.status, it.exit_code) for it in items] == [("bad input", EXIT_BAD_INPUT)]
    _loader_bug(monkeypatch)
    items = convert_many([(str(good), str(tmp_path / "out" / "good.pth"))])
    assert [(it.status, it.exit_code) for it in items] == [("internal error", EXIT_INTERNAL)]
    assert batch_exit_code(items) == EXIT_INTERNAL
