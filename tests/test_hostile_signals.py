"""SIGINT, SIGTERM and SIGHUP are answered within about a second in every step, native calls
included, with exit 130 and the exact list of what was written; a batch's worker processes stop
with it, without tracebacks; no temp file is left, ever.  Disk full is said as such (exit 2) for
every format the tool writes, with no temp file left.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import mobileone_cli

from .hostile import deploy_matches_train, digest, finish_cli, start_cli, temp_files

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mobileone_cli.__file__)))
CUSTOM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                      "custom_3stage.yaml")

# A native call that runs for seconds without returning to Python (torch releases the GIL but
# a handler could run only after it returns), looped: the fusion step never ends by itself.
NATIVE = """
import torch, mobileone_cli.fuse.fusion as m
def held(*a, **k):
    torch.set_num_threads(1)
    big = torch.randn(2000, 2000, dtype=torch.float64)
    print('stage', flush=True)
    while True:
        torch.linalg.eigvals(big)
m.fuse_state_dict = held
"""

# The real torch.save, held inside its own file writes (a write per record, each slow).
WRITING = """
import builtins, time, mobileone_cli.io.write as m
class Slow:
    def __init__(self, fh):
        self.fh, self.said = fh, False
    def write(self, b):
        if not self.said:
            print('stage', flush=True)
            self.said = True
        time.sleep(0.2)
        return self.fh.write(b)
    def __getattr__(self, name):
        return getattr(self.fh, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.fh.close()
def slow_open(path, mode='r', *a, **k):
    fh = builtins.open(path, mode, *a, **k)
    return Slow(fh) if 'w' in mode else fh
m.open = slow_open
"""


@pytest.mark.parametrize("stage, sig", [
    ("native", signal.SIGINT), ("writing", signal.SIGTERM),
    *(pytest.param("native", s, marks=pytest.mark.slow) for s in (signal.SIGTERM, signal.SIGHUP))],
    ids=["native-SIGINT", "writing-SIGTERM", "native-SIGTERM", "native-SIGHUP"])
def test_a_signal_is_answered_within_a_second(stage, sig, tmp_path, tiny_sd):
    """In a long native call (eigvals on 2000x2000: several seconds per call), or inside torch.save's
    own writes: exit 130 within ~1 s, 'interrupted; nothing was written', no temp file (not
    torch's own 'cannot write ([enforce fail ...])' of an interrupted .pth write).  Every signal
    in the native call; the three share one handler, so the writes take one."""
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    before = digest(src)
    dst = tmp_path / "o.pth"
    proc = start_cli(["convert", src, dst, "--no-verify"], NATIVE if stage == "native" else
                     WRITING)
    try:
        assert proc.stdout.readline().strip() == "stage"
        time.sleep(0.5)  # well inside the step
        t0 = time.monotonic()
        proc.send_signal(sig)
        code, out, err = finish_cli(proc, timeout=60)
        answered = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err
    assert answered < 3.0, f"answered after {answered:.1f} s"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["interrupted; nothing was written"], err
    assert not dst.exists() and temp_files(tmp_path) == [] and digest(src) == before


@pytest.fixture(scope="module")
def s0_batch():
    """Eight s0 train state dicts, two calibrated ones taken turn about (calibrating is most
    of their cost; a batch converts each file alike, whatever it holds), made once for the
    module; each test writes its own files."""
    from mobileone_cli.arch.specs import get_arch
    from mobileone_cli.models.synthetic import random_state_dict

    made = [random_state_dict(get_arch("s0"), seed=i) for i in range(2)]
    return {f"m{i}": made[i % 2] for i in range(8)}


def _s0_files(folder, sds):
    folder.mkdir()
    for name, sd in sds.items():
        torch.save(sd, folder / f"{name}.pth")
    return sds


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_parallel_batch_lists_exactly_what_was_written(sig, tmp_path, s0_batch):
    """`convert DIR OUT --jobs 2`, Ctrl-C to the whole process group (as a terminal sends it)
    or SIGTERM to the tool once outputs exist: exit 130, no worker traceback, and the files
    named 'already written' are exactly the files in OUT, each whole; no temp file."""
    sds = _s0_files(tmp_path / "runs", s0_batch)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "mobileone_cli", "convert",
                             str(tmp_path / "runs"), str(out), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            done = [n for n in os.listdir(out)] if out.is_dir() else []
            if any(n.endswith("_deploy.pth") for n in done):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before it could be interrupted"
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # the tool and its workers, as Ctrl-C at a terminal
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted; already written: "), err
    listed = {os.path.basename(p) for p in
              re.sub(r"^interrupted; already written: ", "", lines[0]).split(", ")}
    present = set(os.listdir(out))
    assert listed == present and len(listed) < 8, (listed, present)
    for name in present:
        from mobileone_cli.arch.specs import get_arch

        sd = sds[name.replace("_deploy.pth", "")]
        assert deploy_matches_train(sd, out / name, arch=get_arch("s0")) < 1e-4
    time.sleep(0.5)  # a stray worker would write now
    assert set(os.listdir(out)) == present and temp_files(out) == []


def _mounted_tmpfs(tmp_path, size_kib: int):
    """A shell prefix that runs a command with a tmpfs of ``size_kib`` KiB mounted on
    tmp_path/disk (a private mount namespace), or None where that is not allowed."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return None
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs "
                            f"{disk} && umount {disk}"], capture_output=True)
    if probe.returncode != 0:
        return None
    return disk, f"mount -t tmpfs -o size={size_kib}k tmpfs {disk} && "


# Each writer once: the checkpoint writers, the ONNX exporter's own file writer, and a mobile
# program's bytes (runtimes._common.write_program: .tflite here; .pte's bytes take the same
# function, and its lowering costs ExecuTorch seconds more in a fresh process).
FORMATS = {".pth": "convert", ".safetensors": "convert", ".onnx": "export",
           ".tflite": "export"}
RUNTIMES = {".onnx": "onnxruntime", ".tflite": "litert_torch"}


@pytest.mark.slow
@pytest.mark.parametrize("ext", list(FORMATS))
def test_disk_full_is_said_and_leaves_nothing(ext, tmp_path):
    """A disk that fills during the write (a tmpfs with room for less than the output; else a
    file size limit): exit 2, 'no space left on device' (or the limit), no temp file, no DST;
    never exit 1 without a message, never a torch internal error.  Checkpoints are s0's (8.3 MB); artifacts are of the small custom network
    (168 kB of weights, the room left is half of that): an exporter's write meets the full disk
    the same way at any size, and s0 takes seconds longer to export."""
    if ext in RUNTIMES:
        pytest.importorskip(RUNTIMES[ext])
    from mobileone_cli.arch.specs import get_arch
    from mobileone_cli.io.configfile import load_config
    from mobileone_cli.models.synthetic import random_state_dict

    converts = FORMATS[ext] == "convert"
    spec = get_arch("s0") if converts else load_config(CUSTOM)
    src = tmp_path / "src.pth"
    torch.save(random_state_dict(spec, seed=0), src)
    extra = "" if converts else f" --config {CUSTOM}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        ROOT, os.environ.get("PYTHONPATH")])))
    # Free space: a checkpoint gets a little more than its tensors' bytes (the check before
    # writing passes), less than the file (its headers do not fit); an artifact gets half its
    # weights' bytes: the write itself meets the full disk.
    tensors = _deploy_tensor_bytes(src, spec)
    room = tensors + 6144 if converts else tensors // 2
    mounted = _mounted_tmpfs(tmp_path, 16 * 1024)  # an s0 deploy file is 8.3 MB
    if mounted is not None:
        disk, prefix = mounted
        dst = disk / f"o{ext}"
        fill = (f"head -c $(( $(df -B1 --output=avail {disk} | tail -1) - {room} )) "
                f"/dev/zero > {disk}/filler && ")
        line = prefix + fill + f"{sys.executable} -m mobileone_cli {FORMATS[ext]} {src} " \
                               f"{dst}{extra}; rc=$?; ls -A {disk}; exit $rc"
        proc = subprocess.run(["unshare", "-m", "sh", "-c", line], capture_output=True,
                              text=True, env=env, timeout=900)
        left = [n for n in proc.stdout.split() if n != "filler"]
        needle = "no space left on device"
    else:
        dst = tmp_path / f"o{ext}"
        limit = 4 << 20 if converts else room
        code = ("import resource, signal, sys\n"
                "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
                "from mobileone_cli.cli import main\nmain(sys.argv[1:])\n")
        proc = subprocess.run([sys.executable, "-c", code, FORMATS[ext], str(src), str(dst),
                               *extra.split()],
                              capture_output=True, text=True, env=env, timeout=900)
        left = [n for n in os.listdir(tmp_path) if n.startswith(".")]
        needle = "nothing was written"
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "nothing was written" in errors[0], \
        proc.stderr
    assert "Traceback" not in proc.stderr
    assert left == [] and not dst.exists(), left


def _deploy_tensor_bytes(src, spec) -> int:
    """Bytes of the tensors of SRC's deploy form (what the checkpoint writer checks is free)."""
    from mobileone_cli.fuse.fusion import fuse_state_dict

    sd = fuse_state_dict(torch.load(src, weights_only=True), spec)
    return sum(v.numel() * v.element_size() for v in sd.values())
