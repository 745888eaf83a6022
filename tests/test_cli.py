"""The command group itself: demo, --version, `python -m mobileone_cli`."""
from __future__ import annotations

import json

import os


def test_demo_and_version(run_cli, tmp_path):
    res = run_cli("demo", "--dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "OK" in res.stdout
    assert os.path.exists(tmp_path / "mobileone_s0.pth")
    res = run_cli("--version")
    assert res.exit_code == 0 and "mobileone" in res.stdout


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mobileone_cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert "convert" in out.stdout


# ---------------------------------------------------------------- habits: typos, globals, JSON


def test_did_you_mean_for_commands_and_options(run_cli):
    res = run_cli("convrt", "a", "b")
    assert res.exit_code == 2 and "Did you mean 'convert'?" in res.output
    res = run_cli("convert", "a.pth", "b.pth", "--froce")
    assert res.exit_code == 2 and "Did you mean '--force'?" in res.output
    res = run_cli("stats", "--arhc", "s0")
    assert res.exit_code == 2 and "Did you mean '--arch'?" in res.output
    res = run_cli("zzzzzz")  # nothing close: no wild guess
    assert res.exit_code == 2 and "Did you mean" not in res.output


def test_debug_is_accepted_after_the_subcommand(run_cli, tmp_path):
    res = run_cli("convert", str(tmp_path / "missing.pth"), str(tmp_path / "o.pth"), "--debug")
    assert res.exit_code == 2
    assert "Traceback" in res.stderr and "no such file" in res.stderr


def test_forgotten_dst_is_named(run_cli, write_ckpt):
    res = run_cli("convert", write_ckpt("s0"))
    assert res.exit_code == 2 and "missing DST" in res.stderr
    assert "Missing argument 'SRC...'" not in res.output


def test_json_failures_print_one_json_object(run_cli, tmp_path, write_ckpt):
    res = run_cli("convert", str(tmp_path / "missing.pth"), str(tmp_path / "o.pth"), "--json")
    assert res.exit_code == 2
    err = json.loads(res.stdout)
    assert err["exit_code"] == 2 and "no such file" in err["error"]
    # verify prints its own report on a failed check: still exactly one JSON document
    src = write_ckpt("s0", seed=1)
    other = write_ckpt("s0", form="deploy", seed=2, name="other.pth")
    res = run_cli("verify", src, other, "--input-size", "32", "--batch", "1", "--json")
    assert res.exit_code == 1
    assert json.loads(res.stdout)["passed"] is False
