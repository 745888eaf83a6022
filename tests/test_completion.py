"""Shell completion (click's): the scripts for bash, zsh and fish, and the candidates a partial
command, option or value completes to."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.shell_completion import ShellComplete

from mobileone_cli.cli import cli


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _mobileone_completion"),
                                           ("zsh", "#compdef mobileone"),
                                           ("fish", "complete --no-files --command mobileone")])
def test_completion_scripts(shell, marker):
    env = dict(os.environ, _MOBILEONE_COMPLETE=f"{shell}_source")
    out = subprocess.run([sys.executable, "-c", "from mobileone_cli.cli import main; main()"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout and "_MOBILEONE_COMPLETE" in out.stdout


def complete(args, incomplete):
    comp = ShellComplete(cli, {}, "mobileone", "_MOBILEONE_COMPLETE")
    return [c.value for c in comp.get_completions(args, incomplete)]


def test_partial_names_complete():
    assert complete([], "con") == ["convert"]
    assert set(complete([], "")) >= {"convert", "verify", "stats", "inspect", "export", "demo"}
    assert complete(["convert"], "--fo") == ["--force"]
    assert complete(["verify"], "--all") == ["--all-blocks"]
    assert {"-q", "--quiet", "-v", "--verbose", "--debug"} <= set(complete([], "-"))
    assert complete(["convert", "--to"], "mm") == ["mmpretrain"]
    assert complete(["stats", "--convention"], "f") == ["flops"]
    assert complete(["convert", "--arch"], "s") == ["s0", "s1", "s2", "s3", "s4"]
    assert complete(["-q", "convert", "a.pth"], "--no-") == ["--no-fuse", "--no-verify"]
