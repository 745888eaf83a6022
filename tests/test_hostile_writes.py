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

import pytest
import torch

from .conftest import first_quick
from .hostile import (assert_refused, deploy_matches_train, digest, finish_cli, start_cli,
                      temp_files)


pytestmark = pytest.mark.usefixtures("one_thread")


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


# --------------------------------------------------------------------------- DST before any work

def _src(tmp_path, tiny_sd):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    return src


# ('out/' is not here: a trailing separator names a folder, which batch mode makes.)
@pytest.mark.parametrize("dst,needle", [("", "DST is empty"),
                                        ("no/such/o.pth", "does not exist")])
def test_bad_destination_is_refused_before_loading(dst, needle, tmp_path, tiny_sd,
                                                   monkeypatch):
    """Refused before SRC is even read, not after all the work."""
    import mobileone_cli.io.source as source_mod
    from .hostile import invoke

    def never(*a, **k):
        raise AssertionError("SRC was loaded before DST was checked")

    monkeypatch.setattr(source_mod, "load_checkpoint", never)
    monkeypatch.chdir(tmp_path)
    src = _src(tmp_path, tiny_sd)
    assert_refused(invoke("convert", str(src), dst), None, needle)
    assert temp_files(tmp_path) == []


def test_fifo_destination_is_never_replaced(tmp_path, tiny_sd):
    """--force replaces regular files only: a FIFO (like a device or socket) stays what it is.
    Checked before any work: a missing SRC is not even looked at."""
    from .hostile import invoke

    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    for args in ([], ["--force"]):
        res = invoke("convert", str(tmp_path / "missing.pth"), str(fifo), *args)
        assert_refused(res, None, str(fifo), "is a FIFO", "only ever replaces regular files")
        assert os.path.exists(fifo) and __import__("stat").S_ISFIFO(os.lstat(fifo).st_mode)
    assert temp_files(tmp_path) == []


def test_socket_and_directory_destinations_are_refused(tmp_path):
    import socket

    from mobileone_cli.errors import BadInput
    from mobileone_cli.io.write import check_destination

    path = tmp_path / "s.pth"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        with pytest.raises(BadInput, match="is a socket"):
            check_destination(str(path), force=True)
    finally:
        sock.close()
    (tmp_path / "d.pth").mkdir()
    with pytest.raises(BadInput, match="is a directory"):
        check_destination(str(tmp_path / "d.pth"), force=True)


def test_character_device_is_refused_even_with_force():
    """/dev/null is only looked at (never handed to a write: as root a broken check would
    replace the system's)."""
    from mobileone_cli.errors import BadInput
    from mobileone_cli.io.write import check_destination

    for force in (False, True):
        with pytest.raises(BadInput, match="is a character device"):
            check_destination(os.devnull, force=force)


def test_dangling_symlink_counts_as_existing(tmp_path, tiny_sd):
    """Without --force a dangling link is an existing DST; with --force the LINK is replaced
    (nothing is created where it pointed)."""
    from .hostile import invoke

    src = _src(tmp_path, tiny_sd)
    target = tmp_path / "elsewhere" / "x.pth"
    (tmp_path / "elsewhere").mkdir()
    dst = tmp_path / "dangling.pth"
    os.symlink(target, dst)
    res = invoke("convert", str(src), str(dst), "--no-verify")
    assert res.exit_code == 2 and "already exists (a dangling symbolic link)" in res.stderr
    assert os.path.islink(dst) and not target.exists()
    res = invoke("convert", str(src), str(dst), "--no-verify", "--force")
    assert res.exit_code == 0, res.output
    assert not os.path.islink(dst) and not target.exists()
    assert deploy_matches_train(tiny_sd, dst) < 1e-6
    assert temp_files(tmp_path) == []


def test_symlink_to_a_file_is_replaced_not_written_through(tmp_path, tiny_sd):
    from .hostile import invoke

    src = _src(tmp_path, tiny_sd)
    target = tmp_path / "precious.pth"
    target.write_bytes(b"precious")
    dst = tmp_path / "link.pth"
    os.symlink(target, dst)
    res = invoke("convert", str(src), str(dst), "--no-verify", "--force")
    assert res.exit_code == 0, res.output
    assert target.read_bytes() == b"precious" and not os.path.islink(dst)


def test_longest_legal_destination_name_is_written(tmp_path, tiny_sd):
    """A 254-character file name (NAME_MAX is 255) is legal; the temp name beside it is short
    whatever DST's length ('.NAME.XXXX.tmp' would be too long for such a name)."""
    from .hostile import invoke

    src = _src(tmp_path, tiny_sd)
    dst = tmp_path / ("m" * 250 + ".pth")
    res = invoke("convert", str(src), str(dst), "--no-verify")
    assert res.exit_code == 0, res.output
    assert deploy_matches_train(tiny_sd, dst) < 1e-6
    assert temp_files(tmp_path) == []


def _unprivileged(tmp_path):
    """A read-only folder the test can create: root ignores permissions, so as root the command
    runs as 'nobody' (setpriv) in a folder under /tmp that 'nobody' can reach, with a copy of
    the package there (the clone may sit in a private folder 'nobody' cannot enter).  Returns
    (folder, command prefix, environment); skips, saying why, where 'nobody' cannot run it."""
    import shutil
    import tempfile

    import mobileone_cli

    folder = tempfile.mkdtemp(prefix="mobileone-ro-", dir="/tmp")
    os.chmod(folder, 0o755)
    env = dict(os.environ, HOME=folder)
    if os.geteuid() != 0:
        return folder, [], env
    if shutil.which("setpriv") is None:
        shutil.rmtree(folder)
        pytest.skip("running as root without setpriv: no way to be denied a write")
    package = os.path.join(folder, "pkg")
    shutil.copytree(os.path.dirname(mobileone_cli.__file__),
                    os.path.join(package, "mobileone_cli"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(package):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    os.chmod(package, 0o755)
    env["PYTHONPATH"] = package
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(prefix + [sys.executable, "-c", "import torch, mobileone_cli.cli"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=folder)
    if probe.returncode != 0:
        shutil.rmtree(folder)
        why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"user 65534 cannot run this Python and its packages ({why}); the "
                    f"interpreter or its site-packages are in a folder it cannot read")
    return folder, prefix, env


@pytest.mark.parametrize("command", first_quick("convert", "export"))  # fresh processes
def test_read_only_folder_is_refused_before_any_work(command, tmp_path, tiny_sd):
    import shutil

    if command == "export":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    folder, prefix, env = _unprivileged(tmp_path)
    try:
        src = os.path.join(folder, "ok.pth")
        torch.save(tiny_sd, src)
        os.chmod(src, 0o644)
        out = os.path.join(folder, "ro")
        os.mkdir(out)
        os.chmod(out, 0o555)
        dst = os.path.join(out, "o.onnx" if command == "export" else "o.pth")
        proc = subprocess.run(prefix + [sys.executable, "-m", "mobileone_cli", command, src, dst],
                              capture_output=True, text=True, timeout=300, env=env, cwd=folder)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert "cannot create a file in" in lines[0] and "not writable" in lines[0]
        assert os.listdir(out) == []
    finally:
        os.chmod(os.path.join(folder, "ro"), 0o755) if os.path.isdir(
            os.path.join(folder, "ro")) else None
        shutil.rmtree(folder)


# --------------------------------------------------------------------------- races and signals

_start, _finish = start_cli, finish_cli


@pytest.mark.slow  # two writer processes per case
@pytest.mark.parametrize("force", [False, True], ids=["exclusive", "force"])
def test_two_writers_racing_for_one_new_dst(force, tmp_path, tiny_sd, warm_cli):
    """Both runs (two forks of the warm server: two processes racing for one name) pass every
    check, then publish at the same moment (held at a gate just before publishing).  Without --force exactly one wins and the other exits 2 saying nothing was
    written (check-then-rename let both 'succeed', one output silently lost); with --force both
    succeed.  Either way DST is one whole file and no temp file is left."""
    src = _src(tmp_path, tiny_sd)
    before = digest(src)
    dst = tmp_path / "o.pth"
    gate = tmp_path / "go"
    prelude = f"""
        import mobileone_cli.io.write as w
        real = w._publish
        def gated(tmp, dst, force):
            print("ready", flush=True)
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.005)
            return real(tmp, dst, force)
        w._publish = gated
    """
    args = ["convert", src, dst, "--no-verify"] + (["--force"] if force else [])
    procs = [_start(args, prelude, warm=warm_cli) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        gate.write_text("")
        results = [_finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = sorted(rc for rc, _, _ in results)
    if force:
        assert codes == [0, 0], results
    else:
        assert codes == [0, 2], results
        err = next(e for rc, _, e in results if rc == 2)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines[0].startswith("error:") and "already exists" in lines[0] \
            and "nothing was written" in lines[0], err
        assert "Traceback" not in err
    assert deploy_matches_train(tiny_sd, dst) < 1e-6  # one whole file
    assert temp_files(tmp_path) == [] and digest(src) == before


STAGES = {
    # where the run is held when the signal arrives, and what it has written by then (inside
    # torch.save's own writes: tests/test_hostile_signals.py, with the real torch.save)
    "load": ("import mobileone_cli.io.read as m\n"
             "def held(*a, **k):\n    print('stage', flush=True)\n    time.sleep(120)\n"
             "m.load_torch = held\n", False),
    "fuse": ("import mobileone_cli.fuse.fusion as m\n"
             "def held(*a, **k):\n    print('stage', flush=True)\n    time.sleep(120)\n"
             "m.fuse_state_dict = held\n", False),
    "write": ("import torch\n"
              "def held(obj, fh, *a, **k):\n    fh.write(b'PK partial')\n    fh.flush()\n"
              "    print('stage', flush=True)\n    time.sleep(120)\n"
              "torch.save = held\n", False),
    "published": ("import mobileone_cli.render.convert as m\n"
                  "def held(*a, **k):\n    print('stage', flush=True)\n    time.sleep(120)\n"
                  "m.render_convert = held\n", True),
}


# One signal per stage: SIGINT, SIGTERM and SIGHUP share one handler, and the main thread that
# answers them waits whatever the stage (every signal is sent at each kind of work in
# tests/test_hostile_signals.py).
@pytest.mark.parametrize("stage, sig", [("load", signal.SIGINT), ("fuse", signal.SIGTERM),
                                        ("published", signal.SIGINT)],
                         ids=["load-SIGINT", "fuse-SIGTERM", "published-SIGINT"])
def test_interrupt_at_each_stage(stage, sig, tmp_path, tiny_sd):
    """Ctrl-C or kill during load, fusion, or just after DST was published: exit 130, one line
    that says truthfully what was written, no temp file, SRC untouched, DST absent or whole
    (after the rename it says DST was written)."""
    src = _src(tmp_path, tiny_sd)
    before = digest(src)
    dst = tmp_path / "o.pth"
    prelude, written = STAGES[stage]
    proc = _start(["convert", src, dst, "--no-verify"], prelude)
    try:
        assert proc.stdout.readline().strip() == "stage"
        proc.send_signal(sig)
        rc, _, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    want = f"interrupted; already written: {dst}" if written else \
        "interrupted; nothing was written"
    assert rc == 130 and lines == [want], err
    if written:
        assert deploy_matches_train(tiny_sd, dst) < 1e-6
    else:
        assert not dst.exists()
    assert temp_files(tmp_path) == [] and digest(src) == before


@pytest.mark.slow  # a subprocess interrupted at exit
def test_ctrl_c_during_interpreter_exit_changes_nothing(tmp_path, tiny_sd):
    """A Ctrl-C that arrives once the command has finished (during interpreter exit) prints no
    traceback and leaves the exit code alone; the control run (SIGINT handled again at that
    moment) shows the same signal would otherwise surface as a KeyboardInterrupt."""
    src = _src(tmp_path, tiny_sd)
    late = """
        import atexit
        def late_ctrl_c():
            {restore}
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs here, before atexit returns
        atexit.register(late_ctrl_c)
    """
    runs = {}
    for name, restore in (("tool", "pass"),
                          ("control", "signal.signal(signal.SIGINT, signal.default_int_handler)")):
        dst = tmp_path / f"{name}.pth"
        runs[name] = _finish(_start(["convert", src, dst, "--no-verify"],
                                    late.replace("{restore}", restore)))
    rc, out, err = runs["tool"]
    assert rc == 0 and "KeyboardInterrupt" not in err and "Traceback" not in err, err
    assert "mobileone convert" in out
    assert "KeyboardInterrupt" in runs["control"][2]


def test_temp_file_of_a_killed_run_is_reported(tmp_path, tiny_sd):
    """SIGKILL cannot be caught: the temp file stays.  It is named so that the next run
    writing into that folder recognises it (its process is gone) and says so."""
    from mobileone_cli.io.leftovers import TEMP_PREFIX
    from .hostile import invoke

    src = _src(tmp_path, tiny_sd)
    proc = _start(["convert", src, tmp_path / "killed.pth"], STAGES["write"][0])
    try:
        assert proc.stdout.readline().strip() == "stage"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = temp_files(tmp_path)
    assert len(left) == 1 and left[0].startswith(f"{TEMP_PREFIX}{proc.pid}-")
    assert not (tmp_path / "killed.pth").exists()
    res = invoke("convert", str(src), str(tmp_path / "next.pth"), "--no-verify")
    assert res.exit_code == 0, res.output
    said = " ".join(res.stdout.split())
    assert "were left by a run that was killed" in said and left[0] in said
    assert temp_files(tmp_path) == left  # reported, never deleted behind the user's back
    # A temp file of a run still alive (this process) is not called stale.
    mine = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-abc.tmp"
    mine.write_bytes(b"")
    from mobileone_cli.io.leftovers import stale_temp_files

    assert stale_temp_files(str(tmp_path)) == [str(tmp_path / left[0])]
