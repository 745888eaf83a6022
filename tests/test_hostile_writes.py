"""Destinations and writes: nothing is ever lost or half-written.

DST is checked before any work (empty, trailing slash, missing or unwritable folder, devices,
FIFOs, sockets, dangling links, SRC itself); a failed or interrupted write leaves neither DST
nor a temp file; two writers racing for one new DST cannot both win; an interrupt at any stage
exits 130 saying truthfully what was written; temp files of killed runs are reported.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from .hostile import (assert_refused, deploy_matches_train, digest, one_thread,  # noqa: F401
                      temp_files, tiny_sd)


def test_existing_dst_is_never_overwritten_without_force(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    for name in ("precious.pth", "precious.safetensors"):
        dst = tmp_path / name
        dst.write_bytes(b"precious")
        res = run_cli("convert", str(src), str(dst))
        assert res.exit_code == 2 and "already exists" in res.stderr
        assert "Traceback" not in res.output
        assert dst.read_bytes() == b"precious"
        assert temp_files(tmp_path) == []


def test_src_equal_dst_is_refused_however_spelled(tmp_path, tiny_sd, run_cli, monkeypatch):
    src = tmp_path / "model.pth"
    torch.save(tiny_sd, src)
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    os.symlink(src, tmp_path / "link.pth")
    os.link(src, tmp_path / "hard.pth")
    monkeypatch.chdir(tmp_path)
    for dst in (str(src), str(tmp_path / "link.pth"), "model.pth", "./sub/../model.pth",
                str(tmp_path / "hard.pth")):
        res = run_cli("convert", "model.pth", dst, "--force")
        assert res.exit_code == 2, (dst, res.output)
        assert "destination is the source" in res.stderr and "Traceback" not in res.output
        assert src.read_bytes() == before
    assert temp_files(tmp_path) == []


def _partial_then(exc):
    """A writer that leaves half a file at its target, then fails with ``exc``."""
    def write(obj, path, *args, **kwargs):
        if hasattr(path, "write"):  # torch.save into an open file
            path.write(b"PK\x03\x04 half a checkpoint")
        else:
            with open(path, "wb") as fh:
                fh.write(b"PK\x03\x04 half a checkpoint")
        raise exc
    return write


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("exc,code,needle", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (OSError(errno.ENOSPC, "No space left on device"), 2, "no space left on device"),
    (OSError(errno.EACCES, "Permission denied"), 2, "Permission denied"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), 2,
     "cannot write"),
])
def test_failed_or_interrupted_write_leaves_nothing(fmt, exc, code, needle, tmp_path, tiny_sd,
                                                    run_cli, monkeypatch):
    import safetensors.torch

    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    if fmt == "pth":
        monkeypatch.setattr(torch, "save", _partial_then(exc))
    else:
        monkeypatch.setattr(safetensors.torch, "save_file",
                            lambda t, path, metadata=None: _partial_then(exc)(t, path))
    dst = tmp_path / f"o.{fmt}"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == code, res.output
    assert needle in res.stderr and "Traceback" not in res.output
    assert not dst.exists()
    assert temp_files(tmp_path) == []
    # The same failure with --force over an existing DST keeps the old file whole.
    dst.write_bytes(b"the previous good file")
    res = run_cli("convert", str(src), str(dst), "--force")
    assert res.exit_code == code
    assert dst.read_bytes() == b"the previous good file"
    assert temp_files(tmp_path) == []


def test_disk_full_in_torch_writer_is_reported_as_such(tmp_path, tiny_sd, run_cli, monkeypatch):
    """torch's zip writer says 'unexpected pos' when the disk fills; we say what happened."""
    import shutil
    from collections import namedtuple

    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    usage = namedtuple("usage", "total used free")
    calls = []

    def disk_usage(path):
        calls.append(path)
        return usage(10 ** 9, 10 ** 9, 10 ** 9 if len(calls) == 1 else 0)  # full after writing

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(torch, "save", _partial_then(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")))
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst))
    assert_refused(res, str(dst), "no space left on device")


def test_not_enough_free_space_is_refused_before_writing(tmp_path, tiny_sd, run_cli, monkeypatch):
    import shutil
    from collections import namedtuple

    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: namedtuple("u", "total used free")(10 ** 6, 10 ** 6, 1000))
    dst = tmp_path / "o.safetensors"
    assert_refused(run_cli("convert", str(src), str(dst)), str(dst), "not enough free space")


def test_silently_short_write_is_caught(tmp_path, tiny_sd, run_cli, monkeypatch):
    """A writer that reports success but left a truncated file: DST is never that file."""
    import safetensors.torch

    real = safetensors.torch.save_file

    def short(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)

    monkeypatch.setattr(safetensors.torch, "save_file", short)
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = tmp_path / "o.safetensors"
    assert_refused(run_cli("convert", str(src), str(dst)), str(dst), "does not read back")


def test_missing_destination_folder(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = tmp_path / "no" / "such" / "dir" / "o.pth"
    assert_refused(run_cli("convert", str(src), str(dst)), str(dst), "does not exist")


def test_sigterm_during_write_leaves_no_temp_file(tmp_path, tiny_sd):
    """A conversion killed with SIGTERM mid-write (CI timeout, kill) cleans up after itself."""
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = tmp_path / "o.pth"
    script = textwrap.dedent(f"""
        import sys, time, torch
        def slow_save(obj, fh, *a, **k):
            fh.write(b"PK partial")
            fh.flush()
            print("writing", flush=True)
            time.sleep(120)
        torch.save = slow_save
        from mobileone_cli.cli import main
        main(["convert", {str(src)!r}, {str(dst)!r}, "--no-verify"])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"  # the temp file now exists
        assert temp_files(tmp_path) != []
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted; nothing was written" in err and "Traceback" not in err
    assert not dst.exists()
    assert temp_files(tmp_path) == []
