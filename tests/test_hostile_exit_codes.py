"""Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 internal error (a bug),
130 interrupted; every refusal one line.  The audit at the end enumerates the classes of
hostile input and situation and checks the code and the one-line message of each.
"""
from __future__ import annotations

import os

import pytest
import torch

from .hostile import HUGE_CONFIG, alias_bomb, assert_refused


pytestmark = pytest.mark.usefixtures("one_thread")


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


# --------------------------------------------------------------------------- the audit
#
# One row per class of hostile input or situation found by the attack on the tool: how to
# build it in tmp_path, the command, and the documented exit code.  Each row is checked for
# that code, exactly one message line (error:, interrupted:, or internal error:) plus hints,
# no traceback, no DST and no temp file.  Subject files test each class in depth (bounded
# time and memory, untouched SRC); this table makes sure none is missed or mis-coded.

def _ok_src(t, sd):
    src = t / "ok.pth"
    torch.save(sd, src)
    return src


def _write(path, text):
    path.write_text(text)
    return path


def _zip_bomb(t, sd, mp):
    from .hostile import zip_bomb

    zip_bomb(str(t / "bomb.pth"), sd, gib=1)
    return ["convert", t / "bomb.pth", t / "o.pth"], "is compressed"


def _header(raw):
    def build(t, sd, mp):
        from .hostile import safetensors_with_header

        safetensors_with_header(t / "h.safetensors", raw, payload=b"\0" * 16)
        return ["inspect", t / "h.safetensors"], "corrupt safetensors header"
    return build


def _config(text, command="stats", needle=""):
    def build(t, sd, mp):
        return [command, "--config", _write(t / "c.yaml", text)], needle
    return build


def _image(size, needle):
    def build(t, sd, mp):
        pytest.importorskip("PIL")
        from PIL import Image

        (t / "imgs").mkdir()
        Image.new("L", size).save(t / "imgs" / "i.png")
        return ["verify", _ok_src(t, sd), "--images", t / "imgs"], needle
    return build


def _allocation_failure(t, sd, mp):
    import mobileone_cli.jobs.verify as verify_mod

    def fail(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "2147483648 bytes. Error code 12 (Cannot allocate memory)")

    mp.setattr(verify_mod, "judge", fail)
    return ["verify", _ok_src(t, sd), "--input-size", "64"], "out of memory"


def _existing(t, sd, mp):
    (t / "o.pth").write_bytes(b"precious")
    return ["convert", _ok_src(t, sd), t / "o.pth"], "already exists"


def _dangling(t, sd, mp):
    os.symlink(t / "nowhere.pth", t / "o.pth")
    return ["convert", _ok_src(t, sd), t / "o.pth"], "dangling symbolic link"


def _fifo(t, sd, mp):
    os.mkfifo(t / "o.pth")
    return ["convert", _ok_src(t, sd), t / "o.pth", "--force"], "is a FIFO"


def _unwritable(t, sd, mp):
    """As root nothing is unwritable; the test of a real read-only folder runs as 'nobody'
    (test_hostile_writes.py).  Here the permission check says no to every write."""
    real = os.access
    mp.setattr(os, "access", lambda path, mode, **k: not mode & os.W_OK and real(path, mode, **k))
    return ["convert", _ok_src(t, sd), t / "o.pth"], "not writable"


def _newline_key(t, sd, mp):
    sd = dict(sd)
    sd["stage1.0.rbr_conv.0.conv.weight\nOK: fine"] = sd.pop("stage1.0.rbr_conv.0.conv.weight")
    torch.save(sd, t / "k.pth")
    return ["convert", t / "k.pth", t / "o.pth"], "weight\\nOK: fine"


def _bug(t, sd, mp):
    import mobileone_cli.io.source as source_mod

    mp.setattr(source_mod, "detect_layout", lambda *a, **k: 1 / 0)
    return ["convert", _ok_src(t, sd), t / "o.pth"], "internal error: ZeroDivisionError"


def _mismatch(t, sd, mp):
    import mobileone_cli.fuse.fusion as fusion

    real = fusion.fuse_state_dict

    def off(*a, **k):
        out = real(*a, **k)
        key = next(k for k in out if k.endswith("reparam_conv.bias"))
        out[key] = out[key] + 1.0
        return out

    mp.setattr(fusion, "fuse_state_dict", off)
    return ["convert", _ok_src(t, sd), t / "o.pth"], "NOT equivalent"


def _interrupt(t, sd, mp):
    import mobileone_cli.fuse.fusion as fusion

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    mp.setattr(fusion, "fuse_state_dict", ctrl_c)
    return ["convert", _ok_src(t, sd), t / "o.pth"], "interrupted; nothing was written"


AUDIT = {
    # 1. unbounded work from a small input
    "zip bomb": (_zip_bomb, 2),
    "safetensors header nested 100k deep": (_header(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000
                                                    + b"}"), 2),
    "1e400 in a safetensors shape": (_header(b'{"a": {"dtype": "F32", "shape": [1e400], '
                                             b'"data_offsets": [0, 16]}}'), 2),
    "1e400 in safetensors offsets": (_header(b'{"a": {"dtype": "F32", "shape": [4], '
                                             b'"data_offsets": [0, 1e400]}}'), 2),
    "YAML alias bomb": (_config(alias_bomb(9, 9), needle="aliases"), 2),
    "YAML nested 20k deep": (_config("a: " + "[" * 20000 + "]" * 20000, needle="deeply"), 2),
    "5000-digit integer in YAML": (_config("model: {backbone: {arch: {base: s0, num_classes: "
                                           + "9" * 5000 + "}}}", needle="unreadable YAML"), 2),
    "width_factor: []": (_config("model: {backbone: {arch: {width_factor: [], blocks: [1], "
                                 "conv_branches: 1}}}", needle="width_factor"), 2),
    "width_factor: [1.0e+307]": (_config("model: {backbone: {arch: {width_factor: [1.0e+307], "
                                         "blocks: [1], conv_branches: 1}}}",
                                         needle="width_factor"), 2),
    "blocks: [2, 1000000]": (_config("model: {backbone: {arch: {base: s0, "
                                     "blocks: [2, 1000000, 1, 1]}}}", needle="limit of 64"), 2),
    "config too large to build (demo)": (_config(HUGE_CONFIG, "demo", "needs about"), 2),
    "1x20000 PNG": (_image((1, 20000), "long side"), 2),
    "100-megapixel PNG": (_image((10000, 10000), "pixels"), 2),
    "--batch 1024 --input-size 4096": (lambda t, sd, mp: (
        ["verify", _ok_src(t, sd), "--batch", "1024", "--input-size", "4096"], "one pass"), 2),
    "--seed 1e23": (lambda t, sd, mp: (["convert", _ok_src(t, sd), t / "o.pth", "--seed",
                                        "1e23"], "--seed"), 2),
    "allocation failure": (_allocation_failure, 2),
    # 2. clobbering
    "existing DST without --force": (_existing, 2),
    "dangling symlink DST": (_dangling, 2),
    "FIFO DST with --force": (_fifo, 2),
    "unwritable folder": (_unwritable, 2),
    "empty DST": (lambda t, sd, mp: (["convert", _ok_src(t, sd), ""], "DST is empty"), 2),
    # 3. terminal injection
    "newline in a key name": (_newline_key, 2),
    # the other documented codes
    "verification failed": (_mismatch, 1),
    "internal error (a bug)": (_bug, 3),
    "interrupted": (_interrupt, 130),
}


@pytest.mark.parametrize("case", list(AUDIT))
def test_exit_code_audit(case, tmp_path, tiny_sd, monkeypatch, run_cli):
    from .hostile import temp_files

    build, code = AUDIT[case]
    args, needle = build(tmp_path, tiny_sd, monkeypatch)
    res = run_cli(*args)
    assert res.exit_code == code, (case, res.output)
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    first = {1: "error:", 2: "error:", 3: "internal error:", 130: "interrupted"}[code]
    assert lines and lines[0].startswith(first) and needle in lines[0], (case, res.stderr)
    assert all(ln.startswith("hint:") for ln in lines[1:]), (case, res.stderr)
    if case not in ("existing DST without --force", "dangling symlink DST", "FIFO DST with --force"):
        assert not (tmp_path / "o.pth").exists()
    assert temp_files(tmp_path) == []
