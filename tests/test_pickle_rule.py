"""The rule for the globals a pickled checkpoint names (io/safeload.py, io/pickle_guard.py):
bookkeeping loads as plain data or inert placeholders, nothing from the file is imported or
called, and code-running payloads are refused by name, also inside a real mmengine file."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

from mobileone_cli.io.read import load_checkpoint
from mobileone_cli.io.safeload import Placeholder, load_inert
from mobileone_cli.models.synthetic import random_state_dict

from .conftest import TINY
from .hostile import PAYLOADS, Payload, assert_refused


class Call(Payload):
    """Like Payload, but callable, so pickle accepts it as the function of another reduce:
    ``Call(Call(getattr, (m, 'system')), 'ls')`` pickles ``getattr(m, 'system')('ls')``."""

    def __init__(self, func, args):
        super().__init__(func, *args)

    def __call__(self, *args):
        raise AssertionError("never called while pickling")


@pytest.fixture
def tiny_sd():
    return random_state_dict(TINY, seed=1)


@pytest.fixture
def foreign(tmp_path):
    """An importable module whose function and method leave a mark when they run.  Files refer
    to them; the loader must neither import the module nor call them."""
    name = f"foreign_pkg_{os.getpid()}"
    marker = tmp_path / "RAN"
    (tmp_path / f"{name}.py").write_text(
        "class Tool:\n"
        "    @staticmethod\n"
        f"    def run(*args):\n        open({str(marker)!r}, 'w').write('ran')\n"
        "class Config(dict):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(name), marker
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def _save(obj, path, fmt="zip"):
    torch.save(obj, str(path), _use_new_zipfile_serialization=(fmt == "zip"))
    return str(path)


# ------------------------------------------------------------------- bookkeeping loads

@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_bookkeeping_loads_as_data(fmt, tmp_path, tiny_sd):
    """numpy values come back as numpy values; OrderedDict, bytes and a Namespace as data or an
    inert placeholder holding its fields."""
    extras = {"arr": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.float64(2.5),
              "ints": np.array([1, 2], dtype=">i8"), "objs": np.array(["a", None], dtype=object),
              "od": OrderedDict(a=1), "raw": b"\x00\xffbytes",
              "args": argparse.Namespace(lr=0.1, model="mobileone_s0")}
    src = _save({"state_dict": tiny_sd, **extras}, tmp_path / "f.pth", fmt)
    ck = load_checkpoint(src)
    x = ck.extras
    assert isinstance(x["arr"], np.ndarray) and np.array_equal(x["arr"], extras["arr"])
    assert x["scalar"] == 2.5 and isinstance(x["scalar"], np.float64)
    assert np.array_equal(x["ints"], [1, 2]) and x["objs"].tolist() == ["a", None]
    assert type(x["od"]) is OrderedDict and x["raw"] == extras["raw"]
    assert isinstance(x["args"], Placeholder) and x["args"].state == {"lr": 0.1,
                                                                      "model": "mobileone_s0"}
    assert ck.stubbed == ["argparse.Namespace"]
    assert all(torch.equal(ck.state_dict[k], v) for k, v in tiny_sd.items())


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix itself
def test_numpy_subclasses_are_not_rebuilt(tmp_path, tiny_sd, run_cli):
    """Only plain arrays: a subclass (np.matrix) would run its own code on rebuild."""
    src = _save({"state_dict": tiny_sd, "m": np.matrix([[1.0, 2.0]])}, tmp_path / "m.pth")
    res = run_cli("inspect", src)
    assert res.exit_code == 2 and "not a plain array" in res.stderr, res.output


def test_foreign_classes_and_their_functions_stay_inert(foreign, tmp_path, tiny_sd):
    """getattr(ForeignClass, 'run') (how pickle writes a method) gives a placeholder class, and
    calling it, as a REDUCE in the file does, only makes an inert placeholder."""
    mod, marker = foreign
    src = _save({"state_dict": tiny_sd, "fn": mod.Tool.run,
                 "called": Call(mod.Tool.run, ("now",)), "cfg": mod.Config(lr=0.1)},
                tmp_path / "f.pth", "legacy")
    sys.modules.pop(mod.__name__)
    ck = load_checkpoint(src)
    assert not marker.exists() and mod.__name__ not in sys.modules
    fn, called = ck.extras["fn"], ck.extras["called"]
    assert issubclass(fn, Placeholder) and fn.global_name == f"{mod.__name__}.Tool.run"
    assert isinstance(called, Placeholder) and called.args == ("now",)
    assert ck.extras["cfg"] == {"lr": 0.1}  # a dict subclass comes back as a plain dict
    assert ck.stubbed == [f"{mod.__name__}.Config", f"{mod.__name__}.Tool"]
    with pytest.raises(TypeError):
        called()  # a placeholder object cannot be called
    fn("again")  # a placeholder class only records its arguments
    assert not marker.exists()


def test_loaded_placeholders_survive_and_torch_globals_are_restored(tmp_path, tiny_sd):
    """The loader's allowlist exists only during a load: afterwards torch refuses as before."""
    src = _save({"state_dict": tiny_sd, "args": argparse.Namespace(a=1)}, tmp_path / "n.pth")
    # torch keeps them in a set: compared as sets (the list's order is the set's, and changes
    # when the set is rebuilt)
    before = set(torch.serialization.get_safe_globals())
    load_inert(src)
    after = set(torch.serialization.get_safe_globals())
    assert before <= after
    # A library imported during the load may register its own (torchao does); none is ours.
    added = [repr(g) for g in after - before]
    assert not [g for g in added if "builtins.getattr" in g or "numpy" in g
                or "Namespace" in g], added
    with pytest.raises(Exception, match="argparse.Namespace"):
        torch.load(src, weights_only=True)


# ------------------------------------------------------------------- code stays refused

def _getattr_chains(marker):
    """Payloads that reach os.system through getattr instead of naming it."""
    return {
        "importlib.import_module": Call(Call(getattr, (Call(importlib.import_module, ("os",)),
                                                       "system")), (f"touch {marker}",)),
        "builtins.__import__": Call(Call(getattr, (Call(__import__, ("os",)), "system")),
                                    (f"touch {marker}",)),
        # getattr on a function torch allows, to reach its module's globals
        "builtins.getattr": Call(getattr, (torch._utils._rebuild_tensor_v2, "__globals__")),
    }


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("name", ["importlib.import_module", "builtins.__import__",
                                  "builtins.getattr"])
def test_getattr_chains_are_refused_by_name(name, fmt, tmp_path, tiny_sd, run_cli):
    marker = tmp_path / "PWNED"
    src = _save({"state_dict": tiny_sd, "hook": _getattr_chains(marker)[name]},
                tmp_path / "evil.pth", fmt)
    dst = str(tmp_path / "out.pth")
    for args in (["convert", src, dst], ["inspect", src]):
        res = run_cli(*args)
        assert_refused(res, dst, "refused to load", name)
        assert "--trust-file" in res.stderr
    if name == "builtins.getattr":
        assert "_rebuild_tensor_v2" in res.stderr and "not a placeholder class" in res.stderr
    assert not marker.exists()


def test_the_chains_run_when_unguarded(tmp_path):
    """Control: the chain payload above does run under an unguarded load."""
    marker = tmp_path / "PWNED"
    src = _save(_getattr_chains(marker)["importlib.import_module"], tmp_path / "evil.pth")
    torch.load(src, weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def real_mmengine_dict(runner_file):
    """The Runner's checkpoint as mmengine reads it back (real HistoryBuffers, numpy arrays)."""
    return torch.load(runner_file[0], map_location="cpu", weights_only=False)


@pytest.mark.slow  # the mmengine Runner's file (session fixture)
@pytest.mark.parametrize("glob", list(PAYLOADS) + ["importlib.import_module"])
def test_payload_inside_a_real_mmengine_file_is_refused(glob, real_mmengine_dict, tmp_path,
                                                        run_cli):
    """Everything else in the file is what mmengine wrote (HistoryBuffers, getattr on them,
    numpy): one hostile object in its MessageHub still refuses the whole file, by name."""
    marker = tmp_path / "PWNED"
    obj = dict(real_mmengine_dict)
    hub = dict(obj["message_hub"])
    hub["runtime_info"] = OrderedDict(hub["runtime_info"])
    hub["runtime_info"]["hook"] = (PAYLOADS[glob](marker) if glob in PAYLOADS
                                   else _getattr_chains(marker)[glob])
    obj["message_hub"] = hub
    src = _save(obj, tmp_path / "epoch_1.pth")
    dst = str(tmp_path / "out.pth")
    res = run_cli("convert", src, dst)
    assert_refused(res, dst, "refused to load", glob)
    assert not marker.exists()


def test_stubs_made_during_a_load_do_not_outlive_it(foreign, tmp_path):
    """A placeholder made for a foreign global is the session's: left registered, the next
    load of that global would meet a stale class (and --trust-file would not run the real one)."""
    mod, _ = foreign
    for i, hook in enumerate([Call(mod.Tool.run, ("x",)), Call(getattr, (mod.Tool, "run"))]):
        src = _save({"state_dict": {"w": torch.zeros(2)}, "hook": hook}, tmp_path / f"{i}.pth")
        before = torch.serialization.get_safe_globals()
        load_inert(src)
        left = [g for g in torch.serialization.get_safe_globals() if g not in before]
        assert not [g for g in left if "Placeholder" in repr(g)], left


def test_trust_file_still_runs_the_real_unpickler(foreign, tmp_path, tiny_sd, run_cli):
    """--trust-file is the user's explicit decision: the file's own code runs."""
    mod, marker = foreign
    src = _save({"state_dict": tiny_sd, "hook": Call(mod.Tool.run, ("x",))}, tmp_path / "t.pth")
    res = run_cli("inspect", src)
    assert res.exit_code == 0 and not marker.exists(), res.output
    res = run_cli("--trust-file", src, "inspect", src)
    assert res.exit_code == 0 and "warning: trusted file" in res.stderr
    assert marker.exists()


def test_payloads_never_run_in_a_fresh_process(tmp_path, tiny_sd):
    """No state of the test process (imported modules, allowlists) hides a payload."""
    marker = tmp_path / "PWNED"
    src = _save({"state_dict": tiny_sd, "hook": PAYLOADS["posix.system"](marker)},
                tmp_path / "evil.pth")
    proc = subprocess.run([sys.executable, "-m", "mobileone_cli", "inspect", src],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "posix.system" in proc.stderr, proc.stderr
    assert not marker.exists()
