"""Every command shown in README.md and docs/*.md runs and still prints what is shown.

docs/examples.py runs each document's ``console`` sessions and ``python`` blocks in a fresh
folder at 80 columns; a shown line that no longer appears in the real output (numbers masked),
or a changed exit code, fails here.  `python docs/examples.py --update` refreshes the documents.
"""
from __future__ import annotations

import os

import pytest

from .conftest import docs_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
examples = docs_module("examples")


@pytest.mark.slow
@pytest.mark.parametrize("path", examples.documents(),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_document_commands_run_as_shown(path):
    absent = examples.missing(path)
    if absent:
        pytest.skip(f"shows runtimes that are not installed: {', '.join(absent)} (.ci/run "
                    f"installs them)")
    problems = examples.process(path, update=False)
    assert not problems, "\n".join(problems)


def test_readme_is_short_and_links_existing_docs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    assert len(text.splitlines()) <= 250
    import re

    for target in re.findall(r"\]\((docs/[\w.-]+\.md|examples/[\w.-]+)\)", text):
        assert os.path.exists(os.path.join(ROOT, target)), target


def test_the_checker_fails_on_a_stale_output(tmp_path, monkeypatch):
    """The checker is not vacuous: a wrong line, a wrong exit code and a failing script fail.
    Its commands need no torch, so they run cold (no warm server to start for them)."""
    monkeypatch.setenv("MOBILEONE_DOCS_COLD", "1")
    doc = tmp_path / "doc.md"
    doc.write_text("```console\n$ mobileone stats --arch s9\nerror: no such thing\n"
                   "(exit code 2)\n```\n\n```console\n$ mobileone --version\n"
                   "mobileone, version 9.9.9\n(exit code 1)\n```\n\n"
                   "```python\nraise SystemExit(3)\n```\n\n"
                   "```console excerpt parse-only\n$ mobileone stats --arch s0 --runz 5\n```\n")
    problems = examples.process(str(doc), update=False)
    assert any("shown line not in the output" in p for p in problems), problems
    assert any("exit code 0, documented 1" in p for p in problems), problems
    assert any("python block exits 3" in p for p in problems), problems
    assert any("No such option '--runz'" in p for p in problems), problems


def test_ci_runs_the_readme_set_up_commands_as_written():
    """The README's two set-up commands are what CI runs: if one changes, CI checks the new one."""
    import re

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as fh:
        ci = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    block = readme.split("## Set-up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [re.sub(r"\s+#.*$", "", ln).strip() for ln in block.splitlines() if ln.strip()]
    assert len(commands) == 2 and "torch==2.13.0" in commands[0]
    for command in commands:
        assert command in ci, command


@pytest.mark.slow
def test_warm_commands_print_and_exit_as_cold_ones(tmp_path, monkeypatch):
    """The documents' commands run in a fork of a warm server (docs/warm.py): output, exit codes,
    pipes (between two of its clients too), a python -c script's argv and path, and an error
    all as a fresh interpreter gives."""
    lines = ["mobileone stats --arch s0 | head -3", "mobileone verify missing.pth",
             "mobileone -q convert missing.pth out.pth; echo status $?",
             "python -c 'import sys; print(sys.argv, sys.path[0] == \"\"); sys.exit(3)' a b",
             "python -c 'import torch, mobileone_cli; print(torch.get_num_threads() >= 1)'",
             "mobileone stats --arch s0 --json | python -c 'import json, sys; "
             "print(sorted(json.load(sys.stdin))[:2])'"]
    seen = {}
    for mode in ("warm", "cold"):
        if mode == "cold":
            monkeypatch.setenv("MOBILEONE_DOCS_COLD", "1")
        else:
            assert examples._warm_server() is not None, "the warm server did not start"
        runs = []
        for line in lines:
            cmd = examples.Command(line)
            examples.run(cmd, str(tmp_path))
            runs.append((line, cmd.code, cmd.output))
        seen[mode] = runs
    assert seen["warm"] == seen["cold"]
    assert [code for _, code, _ in seen["warm"]] == [0, 2, 0, 3, 0, 0]
