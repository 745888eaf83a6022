"""Shared by tests/test_hostile_*.py: the refusal oracle, hostile-file builders, hostile pickles,
and a runner that measures a command's CPU time and peak memory in its own process.

The oracle of every refusal: its exit code, no Python traceback, exactly one ``error:`` line
(plus optional ``hint:``/``warning:`` lines) naming what is wrong, and neither DST nor a temp
file afterwards.  Hostile inputs that would cost gigabytes or minutes unbounded run in a
subprocess under an address-space limit far below that failure; the program reports its own
peak RSS (``VmHWM``) and the kernel its CPU time (``os.wait4``), which, unlike wall time, does
not grow when the machine is busy with other work.
"""
from __future__ import annotations

import builtins
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from mobileone_cli.errors import BadInput
from mobileone_cli.io.leftovers import TEMP_PREFIX
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.arch.layouts import remap

from .conftest import TINY, invoke  # noqa: F401 (the CLI in this process, for the test files)

def temp_files(folder) -> list:
    """Temp files of this tool (or any ``.tmp``) left in ``folder``."""
    return [n for n in os.listdir(folder) if n.endswith(".tmp") or n.startswith(TEMP_PREFIX)]


def digest(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def assert_one_error(stderr: str, *needles: str) -> List[str]:
    """Exactly one ``error:`` line, first, naming ``needles``; every other line a hint/warning.
    Returns the non-empty lines."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), stderr
    assert all(ln.startswith(("error:", "hint:", "warning:")) for ln in lines), stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)
    return lines


def assert_refused(res, dst, *needles, code=2):
    """Exit ``code``, one error line naming ``needles``, no traceback, no DST, no temp file."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert_one_error(res.stderr, *needles)
    if dst is not None:
        assert not os.path.exists(dst), "DST written despite the error"
        folder = os.path.dirname(str(dst)) or "."
        assert not os.path.isdir(folder) or temp_files(folder) == []


def deploy_matches_train(train_sd, dst, arch=TINY, layout="apple", eps=1e-5):
    """Independent check of an output (a file or a state dict): float64 train model (eval) vs
    the deploy model, max abs difference relative to max |train output|."""
    from safetensors.torch import load_file

    if isinstance(dst, dict):
        out = dst
    else:
        out = load_file(str(dst)) if str(dst).endswith(".safetensors") else torch.load(
            dst, weights_only=True)
    train = MobileOne(arch, bn_eps=eps).double().eval()
    train.load_state_dict(remap(train_sd, arch, layout, "apple", "train"), strict=True)
    deploy = MobileOne(arch, deploy=True).double().eval()
    deploy.load_state_dict(remap(out, arch, layout, "apple", "deploy"), strict=True)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ref, got = train(x), deploy(x)
    return float((ref - got).abs().max() / ref.abs().max())


# --------------------------------------------------------------------------- measured runs

@dataclass
class Run:
    """A command run in its own process: exit code, output, and what the kernel measured."""

    exit_code: int
    stdout: str
    stderr: str
    cpu_s: float  # user + system CPU seconds of the process
    maxrss_mb: float  # peak resident memory of the program (VmHWM)
    wall_s: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_bounded(*args: object, limit_mb: int = 2048, timeout: float = 300,
                cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                prelude: str = "") -> Run:
    """``mobileone ARGS`` in a subprocess whose address space is capped at ``limit_mb``
    (an unbounded allocation fails instead of taking the machine); ``prelude`` is Python run
    before the CLI (to patch a function, to install signal handlers)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak")
        code = "\n".join([
            "import atexit, resource, sys",
            f"lim = {int(limit_mb)} * 1024 * 1024",
            "resource.setrlimit(resource.RLIMIT_AS, (lim, lim))",
            # VmHWM: the peak of this program's own memory (ru_maxrss would include the
            # test process's pages, which the child shares between fork and exec).
            "def _peak():",
            "    hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')]",
            f"    open({peak_file!r}, 'w').write(hwm[0].split()[1] if hwm else '')",
            "atexit.register(_peak)",
            prelude,
            "from mobileone_cli.cli import main",
            "main(sys.argv[1:])",
        ])
        return _measured(code, args, peak_file, timeout, cwd, env)


def _measured(code: str, args, peak_file: str, timeout: float, cwd, env) -> Run:
    full_env = dict(os.environ, **(env or {}))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=out,
                                stderr=err, cwd=cwd, env=full_env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        try:
            with open(peak_file) as fh:
                peak_mb = int(fh.read()) / 1024.0
        except (OSError, ValueError):
            peak_mb = float("inf")  # killed before it could say: not bounded
        return Run(proc.returncode, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"), usage.ru_utime + usage.ru_stime,
                   peak_mb, wall)


def start_cli(args, prelude: str = "", warm=None, **popen) -> subprocess.Popen:
    """``mobileone ARGS`` in a subprocess after ``prelude``, with Ctrl-C delivered as at a
    terminal (a shell may start background jobs with SIGINT ignored): a fresh interpreter, or
    a fork of the ``warm`` server (conftest.warm_cli; its pid is the client's, not the
    command's: no signals to it)."""
    code = "\n".join(["import os, signal, sys, time",
                      "signal.signal(signal.SIGINT, signal.default_int_handler)",
                      textwrap.dedent(prelude),
                      "from mobileone_cli.cli import main",
                      "main(sys.argv[1:])"])
    popen = dict(dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), **popen)
    python = [*warm, "--python"] if warm else [sys.executable]
    return subprocess.Popen([*python, "-c", code, *map(str, args)], **popen)


def finish_cli(proc: subprocess.Popen, timeout: float = 120):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def assert_bounded(run: Run, *, mb: float, cpu_s: float) -> None:
    assert run.maxrss_mb < mb, f"peak RSS {run.maxrss_mb:.0f} MB >= {mb} MB\n{run.output}"
    assert run.cpu_s < cpu_s, f"{run.cpu_s:.1f} CPU seconds >= {cpu_s}\n{run.output}"


# --------------------------------------------------------------------------- hostile files

def _zip(path, records: Sequence[tuple]) -> None:
    """A zip file of ``records`` (name, method, payload bytes, crc, uncompressed size), written
    by hand: the standard library cannot store a record that is already compressed."""
    local, central = bytearray(), bytearray()
    for name, method, payload, crc, size in records:
        raw = name.encode()
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc,
                             len(payload), size, len(raw), 0) + raw + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               crc, len(payload), size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(central),
                      len(local), 0)
    with open(path, "wb") as fh:
        fh.write(bytes(local) + bytes(central) + end)


def zip_bomb(path, state_dict, gib: int = 3) -> int:
    """A torch checkpoint of ``state_dict`` whose largest tensor record is replaced by one
    deflated record that inflates to ``gib`` GiB of zeros (about 1 MB per GiB on disk).
    Returns the size the record declares, in bytes."""
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "plain.pth")
        torch.save(state_dict, plain)
        with zipfile.ZipFile(plain) as zf:
            infos = zf.infolist()
            blobs = {i.filename: zf.read(i) for i in infos}
    victim = max((i for i in infos if "/data/" in i.filename), key=lambda i: i.file_size)
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    # After a full flush the compressor starts afresh, so one MiB's stream repeats verbatim.
    chunk = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    n = gib * 1024
    stream = chunk * n + c.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    records = []
    for i in infos:
        if i.filename == victim.filename:
            records.append((i.filename, zipfile.ZIP_DEFLATED, stream, crc, n << 20))
        else:
            data = blobs[i.filename]
            records.append((i.filename, zipfile.ZIP_STORED, data, zlib.crc32(data), len(data)))
    _zip(path, records)
    return n << 20


def safetensors_with_header(path, header: bytes, payload: bytes = b"\0" * 64) -> None:
    path = str(path)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header + payload)


def alias_bomb(levels: int = 9, fan: int = 9, field: str = "widths") -> str:
    """A YAML 'billion laughs' reaching a checked config field: ``fan ** levels`` entries from
    a few hundred bytes.  The anchors hide in a field mmpretrain configs carry and the tool
    ignores (``init_cfg``), so only the checked field meets the expansion."""
    anchors = [f"&a0 [{', '.join(['1'] * fan)}]"]
    for i in range(1, levels + 1):
        anchors.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]")
    return ("model:\n  backbone:\n    init_cfg: [" + ", ".join(anchors) + "]\n"
            f"    arch: {{base: s0, {field}: *a{levels}}}\n")


# A config inside every per-field bound of rules/limits.py that describes ~1.7e12 weights.
HUGE_CONFIG = ("model:\n  backbone:\n    arch: {widths: [16384, 16384, 16384, 16384, 16384, 16384],"
               " blocks: [64, 64, 64, 64, 64, 64], conv_branches: 16, kernel_size: 15}\n")


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------- hostile pickles

class Payload:
    """Unpickling this calls ``func(*args)``, which would create the marker file.

    Only the call is pickled (the global and its arguments), as in a real malicious checkpoint."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_marker(marker):
    return f"open({str(marker)!r}, 'w').write('pwned')"


PAYLOADS = {
    "posix.system": lambda marker: Payload(os.system, f"touch {marker}"),
    "builtins.exec": lambda marker: Payload(builtins.exec, _write_marker(marker)),
    "builtins.eval": lambda marker: Payload(builtins.eval, _write_marker(marker)),
    "subprocess.Popen": lambda marker: Payload(subprocess.Popen, ["touch", str(marker)]),
}


# ----------------------------------------------------------------------- shared checks

def refused(fn, *needles):
    with pytest.raises(BadInput) as info:
        fn()
    for needle in needles:
        assert needle in info.value.message, (needle, info.value.message)
    assert "\n" not in info.value.message
    return info.value.message


def returns_quickly(fn, seconds: float = 20.0):
    """``fn()``'s outcome; fails (instead of hanging the suite) if it blocks."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def fake_package(root, weights_path="com.apple.CoreML/weights",
                 model_path="com.apple.CoreML/model.mlmodel") -> str:
    """The folder structure coremltools writes (Manifest.json naming the model and weights)."""
    pkg = os.path.join(root, "m.mlpackage")
    data = os.path.join(pkg, "Data", "com.apple.CoreML")
    os.makedirs(os.path.join(data, "weights"))
    open(os.path.join(data, "model.mlmodel"), "wb").write(b"\0" * 16)
    open(os.path.join(data, "weights", "weight.bin"), "wb").write(b"\0" * 64)
    manifest = {"fileFormatVersion": "1.0.0", "rootModelIdentifier": "a", "itemInfoEntries": {
        "a": {"author": "com.apple.CoreML", "name": "model.mlmodel", "path": model_path},
        "b": {"author": "com.apple.CoreML", "name": "weights", "path": weights_path}}}
    with open(os.path.join(pkg, "Manifest.json"), "w") as fh:
        json.dump(manifest, fh)
    return pkg
