"""Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 internal error (a bug),
130 interrupted; every refusal one line.  The audit at the end enumerates the classes of
hostile input and situation and checks the code and the one-line message of each.
"""
from __future__ import annotations

import os

import pytest
import torch

from .hostile import assert_refused, one_thread, tiny_sd  # noqa: F401 (fixtures)


def test_usage_errors_exit_2(tmp_path, run_cli):
    res = run_cli("convert", "--no-such-option", "a", "b")
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = run_cli("no-such-command")
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_verification_failure_exits_1_and_writes_nothing(tmp_path, tiny_sd, run_cli,
                                                         monkeypatch):
    import mobileone_cli.fuse.fusion as fusion

    real = fusion.fuse_state_dict

    def off_by_a_little(*args, **kwargs):
        out = real(*args, **kwargs)
        key = next(k for k in out if k.endswith("reparam_conv.bias") and k.startswith("stage2"))
        out[key] = out[key] + 0.05
        return out

    monkeypatch.setattr(fusion, "fuse_state_dict", off_by_a_little)
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "NOT equivalent", code=1)


def test_internal_error_exits_3_with_a_bug_hint_and_debug_shows_traceback(
        tmp_path, tiny_sd, run_cli, monkeypatch):
    import mobileone_cli.io.source as source_mod

    def boom(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(source_mod, "detect_layout", boom)
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = str(tmp_path / "o.pth")
    res = run_cli("convert", str(src), dst)
    assert res.exit_code == 3
    assert "Traceback" not in res.output
    assert "internal error: ZeroDivisionError: simulated bug" in res.stderr
    assert "bug" in res.stderr.splitlines()[-1] and "--debug" in res.stderr
    assert not os.path.exists(dst)
    res = run_cli("--debug", "convert", str(src), dst)
    assert res.exit_code == 3 and "Traceback" in res.stderr


def test_debug_shows_traceback_for_bad_input(tmp_path, run_cli):
    dst = str(tmp_path / "o.pth")
    res = run_cli("convert", str(tmp_path / "missing.pth"), dst)
    assert "Traceback" not in res.output
    res = run_cli("--debug", "convert", str(tmp_path / "missing.pth"), dst)
    assert res.exit_code == 2 and "Traceback" in res.stderr and "no such file" in res.stderr


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_other_commands_give_clean_errors(command, tmp_path, run_cli):
    bad = tmp_path / "random.pth"
    bad.write_bytes(os.urandom(2048))
    for src in (str(tmp_path / "missing.pth"), str(tmp_path), str(bad)):
        res = run_cli(command, src)
        assert_refused(res, None)


def test_exit_codes_are_documented(run_cli):
    res = run_cli("--help")
    assert "0 ok, 1 verification failed, 2 bad input or usage, 3 internal error" in \
        " ".join(res.stdout.split())
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ("| 0 ", "| 1 ", "| 2 ", "| 3 "):
        assert code in section
