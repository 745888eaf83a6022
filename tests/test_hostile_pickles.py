"""Malicious pickles: no code from a checkpoint ever runs, whatever command reads it.

Every payload is the real call an attacker would pickle (``os.system``, ``exec``, ``eval``,
``subprocess.Popen``), bare or hidden next to a real state dict, in both torch formats; a control
shows each one does run under an unguarded ``torch.load``.
"""
from __future__ import annotations

import subprocess

import pytest
import torch

from .hostile import PAYLOADS, assert_refused

pytestmark = pytest.mark.usefixtures("one_thread")


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
