"""The command group itself: demo, --version, `python -m mobileone_cli`."""
from __future__ import annotations

import json
import os

import pytest


def test_demo_and_version(run_cli, tmp_path):
    res = run_cli("demo", "--synthetic", "--dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "OK" in res.stdout
    assert os.path.exists(tmp_path / "mobileone_s0.pth")
    again = run_cli("demo", "--synthetic", "--dir", str(tmp_path))  # the files are kept
    assert again.exit_code == 2 and "--force" in again.stderr
    res = run_cli("--version")
    assert res.exit_code == 0 and "mobileone" in res.stdout


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mobileone_cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert "convert" in out.stdout


def test_command_line_exit_flushes_output_runs_exit_handlers_and_keeps_codes(tmp_path):
    """The console script (entry_point) ends a command that imported torch without the
    interpreter's teardown: its output, its file, its exit handlers and its exit code are all
    still there; main() still hands a caller its SystemExit."""
    import subprocess
    import sys

    import torch

    from mobileone_cli.fuse.fusion import fuse_state_dict
    from mobileone_cli.io.write import save_checkpoint
    from mobileone_cli.models.synthetic import random_state_dict

    from .conftest import TINY

    arch = TINY  # the network's size plays no part in how the process ends
    sd = random_state_dict(arch, seed=31)
    src, dst = tmp_path / "train.pth", tmp_path / "deploy.pth"
    save_checkpoint(str(src), sd)
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('exit handler ran', flush=True))\n"
              "from mobileone_cli.cli import entry_point\n"
              "sys.argv = ['mobileone'] + sys.argv[1:]\n"
              "entry_point()\n")

    def run(*args):
        return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, timeout=300)

    ok = run("convert", str(src), str(dst), "--json", "--input-size", "64")
    assert ok.returncode == 0, ok.stderr
    report, handler = ok.stdout.rsplit("}", 1)
    assert json.loads(report + "}")["check"]["passed"]  # the whole JSON document came out
    assert handler.strip() == "exit handler ran"
    written = torch.load(dst, weights_only=True)
    want = fuse_state_dict(dict(sd), arch)
    assert written.keys() == want.keys()
    assert all(torch.equal(written[k], want[k]) for k in want)
    bad = run("convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.pth"))
    assert bad.returncode == 2 and bad.stderr.startswith("error:"), bad.stderr
    exists = run("convert", str(src), str(dst), "--no-verify")  # no --force: refused
    assert exists.returncode == 2 and "exit handler ran" in exists.stdout
    caller = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom mobileone_cli.cli import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
         "    print('caller got', exc.code)\n", "convert", str(src), str(dst), "--no-verify"],
        capture_output=True, text=True, timeout=300)
    assert caller.stdout.strip().endswith("caller got 2"), caller.stdout + caller.stderr


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


# ---------------------------------------------------------------- -q / -v, before or after


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_prints_the_one_line_result(run_cli, write_ckpt, tmp_path, where):
    src, dst = write_ckpt("s0"), str(tmp_path / "d.pth")
    args = ["convert", src, dst, "--input-size", "32"]
    res = run_cli(*(["-q"] + args if where == "before" else args + ["--quiet"]))
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [res.stdout.strip()]  # one line
    assert res.stdout.startswith(f"{dst}: equivalent") and os.path.exists(dst)
    res = run_cli("verify", src, dst, "--input-size", "32", "--batch", "1", "-q")
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 1
    assert res.stdout.startswith("PASS: equivalent")
    res = run_cli("-q", "stats", "--arch", "s0")
    assert res.stdout.strip() == ("s0 at 224x224: params 5,293,272 train, 2,078,504 deploy; "
                                  "MACs 1,051,935,232 train, 275,110,400 deploy")
    res = run_cli("-q", "inspect", dst)
    assert len(res.stdout.splitlines()) == 1 and "MobileOne s0" in res.stdout
    res = run_cli("-q", "convert", src, dst, "--input-size", "32")  # errors are still said
    assert res.exit_code == 2 and res.stdout == "" and "already exists" in res.stderr


def test_quiet_batch_says_the_count_and_each_failure(run_cli, write_ckpt, tmp_path):
    good = write_ckpt("s0")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    res = run_cli("-q", "convert", good, str(bad), str(tmp_path / "out"), "--input-size", "32",
                  "--jobs", "1")
    assert res.exit_code == 2
    lines = res.stdout.splitlines()
    assert lines[0] == f"1 of 2 converted into {tmp_path / 'out'}" and len(lines) == 2
    assert lines[1].startswith("bad input:") and "broken.pth" in lines[1]


def test_verbose_shows_step_times_and_every_block(run_cli, write_ckpt, tmp_path):
    src, dst = write_ckpt("s0"), str(tmp_path / "d.pth")
    res = run_cli("convert", src, dst, "--input-size", "32", "-v")
    assert res.exit_code == 0, res.output
    steps = " ".join(res.stdout.split("steps:", 1)[1].split())  # wrapped at 80 columns
    for step in ("load", "detect", "fuse", "check", "write"):
        assert f"{step} " in steps
    res = run_cli("--verbose", "verify", src, dst, "--input-size", "32", "--batch", "1",
                  "--json")
    d = json.loads(res.stdout)
    assert set(d["timings_s"]) == {"load", "detect", "check"}
    assert all(t >= 0 for t in d["timings_s"].values())
    res = run_cli("verify", src, dst, "--input-size", "32", "--batch", "1", "--json")
    assert "timings_s" not in json.loads(res.stdout)  # the same JSON run after run
    res = run_cli("verify", src, dst, "--input-size", "32", "--batch", "1", "-v")
    for block in ("stage0", "stage1.3", "stage3.19", "stage4.1", "linear"):  # every block
        assert any(ln.startswith(f"│ {block} ") for ln in res.stdout.splitlines()), block


def test_quiet_and_verbose_exclude_each_other(run_cli):
    res = run_cli("-q", "stats", "--arch", "s0", "-v")
    assert res.exit_code == 2 and "exclude each other" in res.output


# ---------------------------------------------------------------- messages that name the fix


@pytest.mark.parametrize("command", [["convert", "{src}", "{dst}"], ["verify", "{src}"],
                                     ["stats", "{src}"]])
def test_mobileone_style_blocks_outside_a_mobileone_suggest_generic(run_cli, tmp_path, command):
    import torch

    from .nets import FastVitLike, randomize

    src = str(tmp_path / "fastvit.pth")
    torch.save(randomize(FastVitLike(), seed=3).state_dict(), src)
    args = [a.format(src=src, dst=tmp_path / "o.pth") for a in command]
    res = run_cli(*args)
    assert res.exit_code == 2 and "no MobileOne found" in res.stderr
    assert "hint:" in res.stderr and "mobileone convert --generic SRC DST" in res.stderr
    # a plain non-MobileOne file gets no such hint
    plain = str(tmp_path / "plain.pth")
    torch.save({"layer.weight": torch.zeros(2, 2)}, plain)
    res = run_cli(*[a.replace(src, plain) for a in args])
    assert res.exit_code == 2 and "--generic" not in res.stderr


def test_dst_folder_with_a_slash_is_a_folder(run_cli, write_ckpt, tmp_path):
    """`convert SRC newdir/` converts into the folder (made), as several SRCs would."""
    res = run_cli("convert", write_ckpt("s0"), str(tmp_path / "newdir") + "/", "--input-size",
                  "32")
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path / "newdir") == ["s0_apple_train_deploy.pth"]
