"""File names that try to act as options, and batches that would eat their own inputs.

A shell expands ``*`` before the tool runs, so in a downloaded folder holding files named
``--trust-file`` or ``--force``, ``mobileone convert * out/`` hands the tool those options.  The
glob cases run for real here: the files are created, the pattern is expanded by a shell or by
``glob.glob`` and the CLI runs in its own process; the payload of the hostile pickle must never
run.  Trust itself names the file, before the command or in ``MOBILEONE_TRUST``.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shlex
import subprocess
import sys

import pytest
import torch

import mobileone_cli

from .hostile import assert_one_error, digest, invoke, temp_files

pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _folder(tmp_path, tiny_sd, *forged: str):
    """A downloaded folder: a good checkpoint, a hostile one, and files named like options."""
    folder = tmp_path / "download"
    folder.mkdir()
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"state_dict": tiny_sd, "x": _Payload(str(marker))}, folder / "evil.pth")
    torch.save(tiny_sd, folder / "m.pth")
    for name in forged:
        (folder / name).write_bytes(b"")
    return folder, marker


def _cli(*args, cwd, env=None, shell_pattern=None):
    """The CLI in its own process; ``shell_pattern``: a shell expands it into the arguments."""
    env = dict(os.environ, **(env or {}))
    root = os.path.dirname(os.path.dirname(os.path.abspath(mobileone_cli.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if shell_pattern is not None:
        line = " ".join([shlex.quote(sys.executable), "-m", "mobileone_cli", *map(
            shlex.quote, map(str, args)), shell_pattern, "out/"])
        return subprocess.run(["sh", "-c", line], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)
    return subprocess.run([sys.executable, "-m", "mobileone_cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("forged", ["--trust-file", "--trust-file=evil.pth",
                                    "--trust-sha256=" + "ab" * 32])
def test_a_file_name_never_turns_on_trust(forged, tmp_path, tiny_sd):
    """`convert * out/` in a folder holding a file named like the trust option: refused before
    anything is read, the payload never runs, nothing is written."""
    folder, marker = _folder(tmp_path, tiny_sd, forged)
    expanded = sorted(glob.glob("*", root_dir=folder))
    assert forged in expanded  # the glob does hand the tool the option
    for res in (_cli("convert", *expanded, "out/", cwd=folder),
                _cli("convert", cwd=folder, shell_pattern="*")):
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        lines = assert_one_error(res.stderr, repr(forged), "name")
        assert any("./*" in ln for ln in lines)
        assert not marker.exists(), "the pickle's code ran"
        assert not (folder / "out").exists()


def test_the_trust_flag_after_the_command_is_refused(tmp_path, tiny_sd):
    """Typed by the user or not, --trust-file after the command cannot open a file: the error
    says where trust is named instead."""
    folder, marker = _folder(tmp_path, tiny_sd)
    res = _cli("inspect", "evil.pth", "--trust-file", cwd=folder)
    assert res.returncode == 2 and not marker.exists(), res.stderr
    lines = assert_one_error(res.stderr, "--trust-file after the command is refused")
    assert any("mobileone --trust-file FILE inspect" in ln and "MOBILEONE_TRUST" in ln
               for ln in lines), res.stderr


def test_an_option_like_file_name_never_forces_an_overwrite(tmp_path, tiny_sd):
    """A file named --force among the glob: the user's existing output stays as it was."""
    folder, marker = _folder(tmp_path, tiny_sd, "--force")
    (folder / "evil.pth").unlink()
    (folder / "out").mkdir()
    kept = folder / "out" / "m_deploy.pth"
    kept.write_bytes(b"the user's own file")
    res = _cli("convert", *sorted(glob.glob("*.pth", root_dir=folder)), "--force", "out/",
               cwd=folder)
    assert res.returncode == 2, res.stderr
    assert_one_error(res.stderr, "'--force'", "shell pattern")
    assert kept.read_bytes() == b"the user's own file"
    assert temp_files(folder / "out") == []


def test_trust_names_the_file_it_opens(tmp_path, tiny_sd, monkeypatch):
    """Trusting one file (by path before the command, or by hash in MOBILEONE_TRUST) opens that
    file only: another file, a copy under another name, or a wrong hash stays refused."""
    folder, marker = _folder(tmp_path, tiny_sd)
    monkeypatch.chdir(folder)
    evil, good = folder / "evil.pth", folder / "m.pth"
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    copy = folder / "copy.pth"
    copy.write_bytes(evil.read_bytes())

    refused = [(["--trust-file", good, "inspect", evil], {}),
               (["--trust-file", evil, "inspect", copy], {}),  # same bytes, another file
               (["inspect", evil], {"MOBILEONE_TRUST": "sha256:" + "0" * 64}),
               (["inspect", evil], {"MOBILEONE_TRUST": str(good)})]
    for args, env in refused:
        res = invoke_env(args, env)
        assert res.exit_code == 2, (args, env, res.output)
        assert "refused to load" in res.stderr and "--trust-file FILE" in res.stderr
        assert not marker.exists(), (args, env)

    res = invoke_env(["inspect", evil], {"MOBILEONE_TRUST": f"sha256:{sha}"})
    assert res.exit_code == 0, res.output
    assert "warning: trusted file: sha256:" in res.stderr and marker.exists()
    marker.unlink()
    res = invoke_env(["--trust-file", evil, "inspect", evil, "--json"], {})
    assert res.exit_code == 0 and marker.exists(), res.output
    assert res.stderr.index("warning: trusted file") == 0  # said before anything was read


def invoke_env(args, env):
    from click.testing import CliRunner

    from mobileone_cli.cli import cli

    return CliRunner(env=dict({"MOBILEONE_TRUST": None}, **env)).invoke(
        cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("value,needle", [("no/such.pth", "cannot trust a file that cannot "
                                                          "be read"),
                                          ("sha256:abc", "64 hexadecimal digits")])
def test_a_bad_trust_name_is_a_usage_error(value, needle, tmp_path):
    res = invoke("--trust-file", value, "stats", "--arch", "s0")
    assert res.exit_code == 2 and needle in res.stderr, res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_batch_never_writes_over_its_own_inputs(force, tmp_path, tiny_sd):
    """m.pth.tar and m_deploy.pth.tar in one folder, `convert DIR DIR`: m's output would be the
    user's m_deploy.pth.tar; refused before any work, with or without --force."""
    folder = tmp_path / "runs"
    folder.mkdir()
    torch.save(tiny_sd, folder / "m.pth.tar")
    torch.save({k: v + 1 for k, v in tiny_sd.items()}, folder / "m_deploy.pth.tar")
    before = {n: digest(folder / n) for n in os.listdir(folder)}
    res = invoke("convert", folder, folder, *(["--force"] if force else []))
    assert res.exit_code == 2, res.output
    assert_one_error(res.stderr, "m_deploy.pth.tar", "one of this batch's inputs",
                     "nothing was written")
    assert {n: digest(folder / n) for n in os.listdir(folder)} == before


def test_a_batch_output_that_is_an_input_by_another_name_is_refused(tmp_path, tiny_sd):
    """The output path is a hard link or a symbolic link to another input: the same file."""
    torch.save(tiny_sd, tmp_path / "a.pth")
    torch.save(tiny_sd, tmp_path / "b.pth")
    out = tmp_path / "out"
    out.mkdir()
    os.link(tmp_path / "b.pth", out / "a_deploy.pth")
    os.symlink(tmp_path / "a.pth", out / "b_deploy.pth")
    before = digest(tmp_path / "b.pth")
    res = invoke("convert", tmp_path / "a.pth", tmp_path / "b.pth", out, "--force")
    assert res.exit_code == 2, res.output
    assert_one_error(res.stderr, "one of this batch's inputs")
    assert digest(tmp_path / "b.pth") == before and os.path.islink(out / "b_deploy.pth")


def test_two_inputs_for_one_output_are_refused(tmp_path, tiny_sd):
    for name in ("a.pth", "b.pth"):
        torch.save(tiny_sd, tmp_path / name)
    res = invoke("convert", tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "out",
                 "--name", "same{ext}")
    assert res.exit_code == 2, res.output
    assert_one_error(res.stderr, "would both be written to")
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_skip_existing_is_still_allowed(tmp_path, tiny_sd):
    """`convert DIR DIR --skip-existing` after a first run: the output that is an input is
    skipped (never written), so the batch goes on."""
    folder = tmp_path / "runs"
    folder.mkdir()
    torch.save(tiny_sd, folder / "m.pth")
    assert invoke("convert", folder, folder, "--no-verify").exit_code == 0
    before = digest(folder / "m_deploy.pth")
    res = invoke("convert", folder, folder, "--skip-existing", "--no-verify")
    assert "one of this batch's inputs" not in res.output
    assert digest(folder / "m_deploy.pth") == before
