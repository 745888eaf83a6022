"""Issue 6: hostile and broken inputs.  No code execution, no tracebacks, nothing lost.

Every refusal is checked for: its exit code, the absence of a Python traceback, one error line
(plus an optional hint), and the absence of DST (and of temp files) afterwards.
"""
from __future__ import annotations

import builtins
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from mobileone_cli.spec.arch import ArchSpec
from mobileone_cli.spec.layouts import remap
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict

TINY = ArchSpec(name="tiny", stem_channels=8, widths=(8, 16, 24), blocks=(1, 2, 1),
                conv_branches=(2, 1, 3), se_blocks=(0, 1, 1), num_classes=10)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run faster on one thread than on several busy ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_sd():
    return random_state_dict(TINY, seed=1)


def temp_files(folder) -> list:
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def assert_refused(res, dst, *needles, code=2):
    """Exit ``code``, one error line naming ``needles``, no traceback, no DST, no temp file."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), res.stderr
    assert all(ln.startswith(("error:", "hint:", "warning:")) for ln in lines), res.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, res.stderr)
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


# --------------------------------------------------------------------------- 1. no code runs

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


@pytest.mark.parametrize("glob", list(PAYLOADS))
def test_payloads_really_run_when_unguarded(glob, tmp_path):
    """Control: each payload does create its marker under an unguarded torch.load, so the
    'marker never appears' assertions below can fail."""
    import time

    marker = tmp_path / "PWNED"
    src = str(tmp_path / "evil.pth")
    torch.save(PAYLOADS[glob](marker), src)
    result = torch.load(src, weights_only=False)
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=30)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()


def _commands(src, dst, good):
    """Every command that reads a checkpoint (those that exist in this checkout)."""
    import importlib.util

    def exists(name):
        # export refuses before reading anything when its optional extra is missing
        needs = {"export": ("onnx", "onnxruntime")}.get(name, ())
        return importlib.util.find_spec(f"mobileone_cli.commands.{name}") is not None and all(
            importlib.util.find_spec(m) is not None for m in needs)

    yield "convert", ["convert", src, dst]
    for name, args in [("inspect", ["inspect", src]), ("verify", ["verify", src]),
                       ("verify", ["verify", good, src]), ("stats", ["stats", src]),
                       ("export", ["export", src, dst + ".onnx"])]:
        if exists(name):
            yield name, args


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "next-to-state-dict"])
@pytest.mark.parametrize("glob", list(PAYLOADS))
def test_malicious_pickle_is_refused_and_never_runs(glob, wrapped, fmt, tmp_path, tiny_sd,
                                                     run_cli):
    marker = tmp_path / "PWNED"
    payload = PAYLOADS[glob](marker)
    obj = {"state_dict": tiny_sd, "meta": {"hook": payload}} if wrapped else payload
    src = str(tmp_path / "evil.pth")
    torch.save(obj, src, _use_new_zipfile_serialization=(fmt == "zip"))
    good = str(tmp_path / "good.pth")
    torch.save(tiny_sd, good)
    dst = str(tmp_path / "out.pth")
    for name, args in _commands(src, dst, good):
        res = run_cli(*args)
        assert_refused(res, dst, glob)
        assert "refused to load" in res.stderr, (name, res.stderr)
        assert "--trust-file" in res.stderr  # the hint names the opt-in
        assert not marker.exists(), f"{name}: the payload ran"
    assert not marker.exists()


def test_placeholders_are_inert_even_without_the_refusal(tmp_path):
    """Below the refusal: the placeholder loader itself never calls a stubbed global."""
    from mobileone_cli.io.safeload import Placeholder, load_inert

    marker = tmp_path / "PWNED"
    src = str(tmp_path / "evil.pth")
    torch.save({"a": torch.zeros(2), "x": PAYLOADS["builtins.exec"](marker),
                "y": PAYLOADS["builtins.eval"](marker)}, src)
    loaded = load_inert(src)  # no vet: every global gets a placeholder, code globals too
    obj, stubbed = loaded.obj, loaded.placeholders
    assert set(stubbed) == {"builtins.exec", "builtins.eval"}
    assert isinstance(obj["x"], Placeholder) and isinstance(obj["y"], Placeholder)
    assert not marker.exists()
    with pytest.raises(TypeError):
        obj["x"]("print('no')")  # a placeholder is not callable
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path, run_cli):
    import pickle

    marker = tmp_path / "PWNED"
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps(PAYLOADS["posix.system"](marker), protocol=2))
    res = run_cli("convert", str(src), str(tmp_path / "o.pth"))
    assert_refused(res, str(tmp_path / "o.pth"), "posix.system")
    assert not marker.exists()


def test_code_globals_policy():
    from mobileone_cli.io.pickle_guard import code_globals, is_code_global

    for name in ("builtins.exec", "exec", "eval", "os.system", "posix.system", "nt.system",
                 "subprocess.Popen", "builtins.getattr", "importlib.import_module",
                 "torch.hub.load", "operator.attrgetter", "functools.partial", "runpy.run_path"):
        assert is_code_global(name), name
    for name in ("mmengine.logging.history_buffer.HistoryBuffer", "numpy.core.multiarray._reconstruct",
                 "numpy.dtype", "builtins.set", "collections.OrderedDict", "osx.thing",
                 "torch.nn.Module"):
        assert not is_code_global(name), name
    assert code_globals(["numpy.dtype", "exec"]) == ["builtins.exec"]


# --------------------------------------------------------------------------- 2. clean errors

def test_missing_directory_and_empty(tmp_path, run_cli):
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(tmp_path / "nope.pth"), dst), dst, "no such file")
    assert_refused(run_cli("convert", str(tmp_path), dst), dst)  # a folder means batch mode
    assert_refused(run_cli("inspect", str(tmp_path)), None, "is a directory")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert_refused(run_cli("convert", str(empty), dst), dst, "empty file")


def test_pipes_and_devices_are_refused_without_blocking(tmp_path, run_cli):
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)  # opening it for reading would wait forever for a writer
    dst = str(tmp_path / "o.pth")
    for src in (str(fifo), os.devnull):
        assert_refused(run_cli("convert", src, dst), dst, "not a regular file")


@pytest.mark.parametrize("kind", ["zip-half", "zip-head", "zip-minus-one", "legacy-half"])
def test_truncated_files(kind, tmp_path, tiny_sd, run_cli):
    src = tmp_path / "t.pth"
    torch.save(tiny_sd, src, _use_new_zipfile_serialization=kind.startswith("zip"))
    data = src.read_bytes()
    cut = {"zip-half": len(data) // 2, "zip-head": 100, "zip-minus-one": len(data) - 1,
           "legacy-half": len(data) // 2}[kind]
    src.write_bytes(data[:cut])
    dst = str(tmp_path / "o.pth")
    res = run_cli("convert", str(src), dst)
    assert_refused(res, dst, str(src))
    assert any(w in res.stderr for w in ("truncated", "corrupt")), res.stderr


def test_bit_flip_in_tensor_data_fails_the_crc(tmp_path, tiny_sd, run_cli):
    """torch.load checks no checksum; we do: a flipped bit is not a silently wrong weight."""
    import zipfile

    src = tmp_path / "flip.pth"
    torch.save(tiny_sd, src)
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 64)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                      info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 17] ^= 0x04
    src.write_bytes(bytes(data))
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "CRC")


@pytest.mark.parametrize("name,content", [
    ("random.pth", os.urandom(4096)),
    ("model.json", json.dumps({"stage0.weight": [1.0, 2.0]}).encode()),
    ("config.yaml", b"model:\n  type: MobileOne\n  arch: s0\n"),
    ("text.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"),
])
def test_not_a_checkpoint(name, content, tmp_path, run_cli):
    src = tmp_path / name
    src.write_bytes(content)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "not a PyTorch or safetensors")


def _safetensors_with_header(path, header: bytes, payload: bytes = b"\0" * 64):
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)


@pytest.mark.parametrize("header,needle", [
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]', "corrupt safetensors header"),
    (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 9999]}}', "outside the file"),
    (b'{"a": {"dtype": "F32", "shape": [4]}}', "corrupt safetensors header"),
    (b'{"__metadata__": [1], "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',
     "__metadata__"),
    (b'["not", "an", "object"]', "not a PyTorch or safetensors"),
    (b'{"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}', "does not fill"),
    (b'{"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}', "does not fill"),
    (b'{"a": {"dtype": "WEIRD", "shape": [4], "data_offsets": [0, 16]}}', ""),
])
def test_corrupt_safetensors_header(header, needle, tmp_path, run_cli):
    src = tmp_path / "bad.safetensors"
    _safetensors_with_header(src, header)
    dst = str(tmp_path / "o.safetensors")
    assert_refused(run_cli("convert", str(src), dst), dst, needle)
    res = run_cli("inspect", str(src))
    assert_refused(res, None, needle)


def test_safetensors_header_length_beyond_file(tmp_path, run_cli):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(struct.pack("<Q", 10 ** 12) + b'{"a": 1}')
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst)


def test_resnet_state_dict(tmp_path, run_cli):
    src = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7), "bn1.running_var": torch.ones(64),
                "layer1.0.conv1.weight": torch.randn(64, 64, 3, 3),
                "fc.weight": torch.randn(1000, 512)}, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "no MobileOne found", "4 keys")


def test_two_mobileones_under_different_prefixes_need_prefix(tmp_path, tiny_sd, run_cli):
    """Never a silent pick (it used to take the shortest prefix): 'backbone.' vs 'teacher.'."""
    sd = {**{f"backbone.{k}": v for k, v in tiny_sd.items()},
          **{f"teacher.{k}": v for k, v in random_state_dict(TINY, seed=2).items()}}
    src = tmp_path / "two.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    assert_refused(run_cli("convert", str(src), str(dst)), str(dst), "several MobileOnes",
                   "'backbone.'", "'teacher.'")
    res = run_cli("convert", str(src), str(dst), "--prefix", "backbone.")
    assert res.exit_code == 0, res.output
    out = torch.load(dst, weights_only=True)
    ours = {k[len("backbone."):]: v for k, v in out.items() if k.startswith("backbone.")}
    assert deploy_matches_train(tiny_sd, ours) < 1e-6
    assert all(torch.equal(out[f"teacher.{k}"], v)
               for k, v in random_state_dict(TINY, seed=2).items())  # passed through


def test_other_variant_than_arch(write_ckpt, tmp_path, run_cli):
    src = write_ckpt("s1")
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", src, dst, "--arch", "s2"), dst, "s1", "s2")
    assert_refused(run_cli("convert", src, dst, "--arch", "s9"), dst, "s9")


def test_missing_and_unexpected_keys_are_named_and_counted(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    gone = ["stage1.0.rbr_conv.0.conv.weight", "stage2.1.rbr_conv.0.bn.bias",
            "stage2.1.rbr_conv.0.bn.running_mean", "stage3.1.se.reduce.bias",
            "stage2.3.rbr_skip.weight"]
    for k in gone:
        del sd[k]
    sd["stage2.1.rbr_conv.0.bn.running_std"] = torch.ones(16)
    src = tmp_path / "keys.pth"
    torch.save(sd, src)
    dst = str(tmp_path / "o.pth")
    res = run_cli("convert", str(src), dst)
    assert_refused(res, dst, "5 missing key(s)", "1 unexpected key(s)",
                   "stage2.1.rbr_conv.0.bn.running_std", "and 2 more")
    assert sum(k in res.stderr for k in gone) == 3  # the first few, not all of them


def test_wrong_shape_names_key_expected_and_found(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["stage2.2.rbr_conv.0.conv.weight"] = torch.randn(16, 1, 5, 5)
    src = tmp_path / "shape.pth"
    torch.save(sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "stage2.2.rbr_conv.0.conv.weight",
                   "[16, 1, 5, 5]", "expected [16, 1, 3, 3]")


@pytest.mark.parametrize("value,needle", [
    (torch.ones(16, dtype=torch.int64), "int64"),
    (torch.ones(16, dtype=torch.bool), "bool"),
    (torch.ones(16, dtype=torch.complex64), "complex64"),
    ("not a tensor", "str, not a tensor"),
])
def test_non_float_where_float_belongs(value, needle, tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["stage2.1.rbr_conv.0.bn.running_var"] = value
    src = tmp_path / "dtype.pth"
    torch.save({"state_dict": sd}, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "stage2.1.rbr_conv.0.bn.running_var",
                   needle)


def test_non_tensor_values_are_refused(tmp_path, tiny_sd, run_cli):
    key = "stage1.0.rbr_conv.0.bn.num_batches_tracked"
    sd = dict(tiny_sd)
    sd[key] = 7
    dst = str(tmp_path / "o.pth")
    src = tmp_path / "nbt.pth"
    torch.save({"state_dict": sd}, src)  # inside the state dict: named as not a tensor
    assert_refused(run_cli("convert", str(src), dst), dst, key, "not a tensor")
    torch.save(sd, src)  # a bare dict's non-tensors are top-level metadata: the key is missing
    assert_refused(run_cli("convert", str(src), dst), dst, key, "missing")


@pytest.mark.parametrize("key,value", [
    ("stage2.0.rbr_conv.0.conv.weight", float("nan")),
    ("stage2.0.rbr_conv.0.bn.running_mean", float("inf")),
    ("stage1.1.rbr_skip.running_var", float("nan")),
    ("linear.bias", float("-inf")),
])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_nan_and_inf_are_refused(key, value, fmt, tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    t = sd[key].clone()
    t.view(-1)[1] = value
    sd[key] = t
    src = tmp_path / f"nan.{fmt}"
    torch.save(sd, src) if fmt == "pth" else save_file(sd, str(src))
    dst = str(tmp_path / f"o.{fmt}")
    assert_refused(run_cli("convert", str(src), dst), dst, key, "NaN/Inf")


def _with_var(tiny_sd, value, key="stage2.1.rbr_conv.0.bn.running_var"):
    sd = dict(tiny_sd)
    t = sd[key].clone()
    t[3] = value
    sd[key] = t
    return sd


def test_negative_running_var_is_refused(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "neg.pth"
    torch.save(_with_var(tiny_sd, -0.25), src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "stage2.1.rbr_conv.0.bn.running_var",
                   "negative")


def test_zero_running_var_with_zero_eps_is_refused(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "zero.pth"
    torch.save(_with_var(tiny_sd, 0.0), src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst, "--bn-eps", "0"), dst,
                   "stage2.1.rbr_conv.0.bn.running_var", "divides by zero")


def test_zero_running_var_with_eps_is_exact_and_reported(tmp_path, tiny_sd, run_cli):
    """A dead channel (var == 0) is fine with eps > 0, as in PyTorch's eval mode: converted,
    reported, and the output checked here against the float64 train model."""
    sd = _with_var(tiny_sd, 0.0)
    src = tmp_path / "dead.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    assert "running_var == 0" in " ".join(res.stdout.split())
    assert deploy_matches_train(sd, dst) < 1e-6


def test_zero_eps_with_positive_variances_is_exact(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst), "--bn-eps", "0")
    assert res.exit_code == 0, res.output
    assert deploy_matches_train(tiny_sd, dst, eps=0.0) < 1e-6


@pytest.mark.parametrize("eps", ["-1e-5", "nan", "inf", "-inf", "2"])
def test_bad_bn_eps_option(eps, tmp_path, tiny_sd, run_cli):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst, f"--bn-eps={eps}"), dst, "--bn-eps")


def test_bn_eps_is_checked_in_the_library_too(tmp_path, tiny_sd):
    from mobileone_cli.convert import convert_file
    from mobileone_cli.errors import BadInput

    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    with pytest.raises(BadInput, match="bn-eps"):
        convert_file(str(src), str(tmp_path / "o.pth"), eps=-1.0)
    assert not (tmp_path / "o.pth").exists()


def test_huge_weights_that_overflow_when_fused_are_refused(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    g = sd["stage2.1.rbr_conv.0.bn.weight"].clone()
    g[0] = 3e38  # finite in float32; gamma / sqrt(var + eps) is not
    sd["stage2.1.rbr_conv.0.bn.weight"] = g
    sd["stage2.1.rbr_conv.0.bn.running_var"] = torch.full((16,), 1e-3)
    src = tmp_path / "huge.pth"
    torch.save(sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "overflows float32",
                   "stage2.1.reparam_conv")


def test_meta_and_sparse_tensors(tmp_path, tiny_sd, run_cli):
    dst = str(tmp_path / "o.pth")
    for name, value, needle in [
            ("meta", torch.empty(8, 3, 3, 3, device="meta"), "meta tensor"),
            ("sparse", tiny_sd["stage0.rbr_conv.0.conv.weight"].to_sparse(), "sparse")]:
        sd = dict(tiny_sd)
        sd["stage0.rbr_conv.0.conv.weight"] = value
        src = tmp_path / f"{name}.pth"
        torch.save(sd, src)
        assert_refused(run_cli("convert", str(src), dst), dst, needle,
                       "stage0.rbr_conv.0.conv.weight")


def test_empty_and_even_stem(tmp_path, tiny_sd, run_cli):
    dst = str(tmp_path / "o.pth")
    for shape in [(0, 3, 3, 3), (8, 3, 4, 4)]:
        sd = dict(tiny_sd)
        sd["stage0.rbr_conv.0.conv.weight"] = torch.zeros(shape)
        src = tmp_path / "stem.pth"
        torch.save(sd, src)
        assert_refused(run_cli("convert", str(src), dst), dst, "stem kernel")


def test_half_fused_checkpoint(tmp_path, tiny_sd, run_cli):
    from mobileone_cli.fuse.fusion import fuse_state_dict

    fused = fuse_state_dict(tiny_sd, TINY)
    sd = dict(tiny_sd)
    for k in [k for k in sd if k.startswith("stage1.0.")]:
        del sd[k]
    sd.update({k: v for k, v in fused.items() if k.startswith("stage1.0.")})
    src = tmp_path / "half.pth"
    torch.save(sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "mixes train-form and deploy-form")


def test_non_tensor_entries_cannot_go_to_safetensors(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["neck.scale"] = 3  # passes through to a .pth; a .safetensors file cannot hold it
    src = tmp_path / "extra.pth"
    torch.save({"state_dict": sd}, src)
    dst = str(tmp_path / "o.safetensors")
    assert_refused(run_cli("convert", str(src), dst), dst, "neck.scale", "not a tensor")
    res = run_cli("convert", str(src), str(tmp_path / "o.pth"))
    assert res.exit_code == 0, res.output


def test_tied_tensors_go_to_safetensors(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["neck.tied"] = sd["linear.weight"]  # same storage: safetensors refuses shared memory
    sd["neck.view"] = sd["linear.weight"][:2]
    src = tmp_path / "tied.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.safetensors"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file

    out = load_file(str(dst))
    assert torch.equal(out["neck.tied"], tiny_sd["linear.weight"])
    assert torch.equal(out["neck.view"], tiny_sd["linear.weight"][:2])


def test_mixed_float_dtypes_are_widened_not_mismatched(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["stage0.rbr_conv.0.conv.weight"] = sd["stage0.rbr_conv.0.conv.weight"].half()
    src = tmp_path / "mixed.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    assert "mixed float dtypes" in " ".join(res.stdout.split())
    assert deploy_matches_train(sd, dst) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_source_is_not_a_false_mismatch(dtype, tmp_path, tiny_sd, run_cli):
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tiny_sd.items()}
    src = tmp_path / "half.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    out = torch.load(dst, weights_only=True)
    assert {v.dtype for v in out.values()} == {dtype}
    # Our own measure: the stored weights are the fp64 fusion rounded once to ``dtype``.
    assert deploy_matches_train(sd, dst) < (2e-2 if dtype == torch.bfloat16 else 4e-3)


def test_verify_agrees_with_convert_on_numeric_edge_cases(tmp_path, tiny_sd, run_cli):
    """Half-precision files verify (fused to float32, not reported as a rounding mismatch);
    a train model that overflows is bad input (2), not a failed verification (1)."""
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tiny_sd.items()}
    src = tmp_path / "half.pth"
    torch.save(half, src)
    res = run_cli("verify", str(src), "--input-size", "32", "--batch", "1")
    assert res.exit_code == 0, res.output
    huge = dict(tiny_sd)
    g = huge["stage2.3.rbr_skip.weight"].clone()
    g[0] = 3e38
    huge["stage2.3.rbr_skip.weight"] = g
    src = tmp_path / "huge.pth"
    torch.save(huge, src)
    for args in (["verify", str(src), "--input-size", "32", "--batch", "1"],
                 ["convert", str(src), str(tmp_path / "o.pth")]):
        assert_refused(run_cli(*args), str(tmp_path / "o.pth"), "NaN/Inf")


# --------------------------------------------------------------------------- exit codes, --debug

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


# --------------------------------------------------------------------------- 3. nothing lost

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
