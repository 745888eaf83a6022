"""Checkpoints written by training libraries themselves convert without --trust-file, --ema picks
the EMA weights, and the outputs hold exactly the library's deploy keys and compute what the
library computed.

- tests/fixtures/timm/: ``last.pth.tar`` written by timm's ``CheckpointSaver`` (ModelEmaV3,
  NativeScaler, an ``argparse.Namespace``), and timm's own outputs (make_timm_fixtures.py).
- tests/fixtures/mmpretrain/: ``epoch_2.pth`` written by mmengine's Runner training mmpretrain's
  ImageClassifier(MobileOne) with EMAHook, and mmpretrain's outputs (make_mmpretrain_fixtures.py).
- mmengine files written during the test by the INSTALLED mmengine's Runner
  (tests/mmengine_runner.py), so a future mmengine release that changes the format fails here.

The reference outputs are the libraries' (timm's ``reparameterize_model``, mmpretrain's
``switch_to_deploy``), computed in their float32; ours run the converted file in float64.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mobileone_cli.io.read import load_checkpoint
from mobileone_cli.io.safeload import Placeholder
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.arch.specs import ArchSpec
from mobileone_cli.arch.layouts import remap

from .mmengine_runner import ARCH as MMP_ARCH

FIXTURES = Path(__file__).parent / "fixtures"
# timm's byobnet MobileOne of make_timm_fixtures.TIMM_CFG, written out by the published architecture
# of the reference: widths int(base * wf) of (64, 128, 256, 512), one k for every stage.
TIMM_ARCH = ArchSpec(name="custom", stem_channels=16, widths=(16, 32, 64, 64),
                     blocks=(1, 1, 2, 1), conv_branches=(2, 2, 2, 2), se_blocks=(0, 0, 1, 1),
                     num_classes=10, se_ratio=0.125)
# The libraries compute in float32; a correct deploy file run in float64 lands ~1e-7 from them,
# a wrong weight set (raw instead of EMA) ~0.5.
MATCH = 1e-5


def _expected(name):
    return torch.load(FIXTURES / name / "expected.pth", weights_only=True)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def run_deploy(sd, arch, layout, x):
    """Our deploy model (float64) holding the tensors of ``sd`` (``layout`` names, no prefix)."""
    net = MobileOne(arch, deploy=True).double().eval()
    net.load_state_dict(remap(sd, arch, layout, "apple", "deploy"), strict=True)
    with torch.no_grad():
        return net(x.double())


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def shapes(sd):
    return {k: list(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("ema", [False, True], ids=["state_dict", "ema"])
def test_timm_checkpoint_saver_file(ema, tmp_path, run_cli):
    exp = _expected("timm")
    src = FIXTURES / "timm" / "last.pth.tar"
    dst = tmp_path / "deploy.pth"
    res = run_cli("convert", src, dst, *(["--ema"] if ema else []))
    assert res.exit_code == 0, res.output
    assert "trust-file" not in res.output
    assert "argparse.Namespace" in res.stdout  # read as an inert placeholder, and said so
    out = _load(dst)
    # exactly timm's reparameterized state dict: a strict load into timm's deploy model
    assert shapes(out) == dict(exp["deploy_keys"])
    want, other = ("ema", "raw") if ema else ("raw", "ema")
    got = run_deploy(out, TIMM_ARCH, "timm", exp["input"])
    assert rel(got, exp[f"{want}_deploy"]) < MATCH
    assert rel(got, exp[f"{want}_train_eval"]) < MATCH
    assert rel(got, exp[f"{other}_deploy"]) > 0.1  # the other weight set is far away


def test_timm_file_in_timm_itself(tmp_path, run_cli):
    """Where timm imports, the converted file loads strictly into timm's own deploy model."""
    pytest.importorskip("timm", reason="timm needs torchvision, which does not install beside "
                                       "the CPU torch wheel of the test environment")
    from timm.utils import reparameterize_model

    from .fixtures.make_timm_fixtures import build_model

    exp = _expected("timm")
    dst = tmp_path / "deploy.pth"
    assert run_cli("convert", FIXTURES / "timm" / "last.pth.tar", dst, "--ema").exit_code == 0
    model = reparameterize_model(build_model().eval())
    model.load_state_dict(_load(dst), strict=True)
    with torch.no_grad():
        assert rel(model(exp["input"]), exp["ema_deploy"]) < MATCH


@pytest.mark.parametrize("ema", [False, True], ids=["state_dict", "ema"])
def test_mmpretrain_training_file(ema, tmp_path, run_cli):
    """mmengine's EMAHook saves the EMA weights as 'state_dict': both ways give them."""
    exp = _expected("mmpretrain")
    src = FIXTURES / "mmpretrain" / "epoch_2.pth"
    dst = tmp_path / "deploy.pth"
    res = run_cli("convert", src, dst, *(["--ema"] if ema else []))
    assert res.exit_code == 0, res.output
    assert "trust-file" not in res.output
    assert "'state_dict' holds the EMA weights" in res.stdout
    assert "HistoryBuffer" in res.stdout
    obj = _load(dst)  # a plain file again: weights-only loading reads it, meta included
    assert obj["meta"]["epoch"] == 2 and obj["meta"]["dataset_meta"]["classes"][0] == "class0"
    assert list(map(list, shapes(obj["state_dict"]).items())) == exp["deploy_keys"]
    got = run_deploy(obj["state_dict"], MMP_ARCH, "mmpretrain", exp["input"])
    assert rel(got, exp["ema_deploy"]) < MATCH
    assert rel(got, exp["ema_train_eval"]) < MATCH
    assert rel(got, exp["raw_deploy"]) > 0.1


def test_mmpretrain_file_in_mmpretrain_itself(tmp_path, run_cli):
    """Where mmpretrain imports, the output loads strictly into ImageClassifier(deploy=True)."""
    pytest.importorskip("mmpretrain", reason="mmpretrain needs mmcv and torchvision, which do "
                                             "not install beside the CPU torch wheel here")
    from mmpretrain.registry import MODELS

    from .fixtures.make_mmpretrain_fixtures import model_cfg

    exp = _expected("mmpretrain")
    dst = tmp_path / "deploy.pth"
    assert run_cli("convert", FIXTURES / "mmpretrain" / "epoch_2.pth", dst).exit_code == 0
    clf = MODELS.build(model_cfg(deploy=True)).eval()
    clf.load_state_dict(_load(dst)["state_dict"], strict=True)
    with torch.no_grad():
        assert rel(clf(exp["input"], mode="tensor"), exp["ema_deploy"]) < MATCH


# ------------------------------------------------- files the installed mmengine writes

@pytest.mark.slow  # an mmengine Runner trains an epoch in a subprocess (session fixture)
def test_runner_file_is_what_mmengine_writes(runner_file):
    """The file really needs what weights-only loading refuses: HistoryBuffer, getattr, numpy."""
    path, _ = runner_file
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert {"builtins.getattr", "mmengine.logging.history_buffer.HistoryBuffer"} <= unsafe
    assert any(n.startswith("numpy") for n in unsafe)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    ck = load_checkpoint(str(path))
    assert not ck.trusted and ck.stubbed == ["mmengine.logging.history_buffer.HistoryBuffer"]
    assert {"meta", "message_hub", "optimizer", "param_schedulers", "ema_state_dict"} <= set(
        ck.extras)
    hub = ck.extras["message_hub"]
    buf = hub["log_scalars"]["train/loss"]
    assert type(buf).__name__ == "HistoryBuffer" and buf.global_name.startswith("mmengine")
    # numpy values come back as numpy values; the statistics functions as placeholders
    assert buf.state["_log_history"].dtype.kind == "f" and len(buf.state["_log_history"]) == 2
    mean = buf.state["statistics_methods"]["mean"]  # getattr(HistoryBuffer, 'mean') in the file
    assert issubclass(mean, Placeholder) and mean.global_name.endswith("HistoryBuffer.mean")
    assert ck.extras["optimizer"]["param_groups"][0]["momentum"] == 0.9


@pytest.mark.slow  # the mmengine Runner's file (session fixture)
@pytest.mark.parametrize("ema", [False, True], ids=["state_dict", "ema"])
def test_runner_file_converts_to_the_ema_weights(ema, runner_file, tmp_path, run_cli):
    path, live = runner_file
    dst = tmp_path / "deploy.pth"
    res = run_cli("convert", path, dst, *(["--ema"] if ema else []))
    assert res.exit_code == 0, res.output
    out = _load(dst)
    assert list(map(list, shapes(out["state_dict"]).items())) == _expected("mmpretrain")[
        "deploy_keys"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = run_deploy(out["state_dict"], MMP_ARCH, "mmpretrain", x)
    for name, close in (("ema", True), ("raw", False)):
        train = MobileOne(MMP_ARCH).double().eval()
        train.load_state_dict(remap(live[name], MMP_ARCH, "mmpretrain", "apple", "train"))
        with torch.no_grad():
            ref = train(x)
        assert (rel(got, ref) < 1e-6) == close, (name, rel(got, ref))


@pytest.mark.slow  # the mmengine Runner's file (session fixture)
def test_runner_file_with_trust_needs_mmengine(runner_file, tmp_path):
    """--trust-file runs the real unpickler: without mmengine it fails, and says what works."""
    path, _ = runner_file
    code = ("import sys; sys.modules['mmengine'] = None\n"  # as if mmengine were not installed
            "from mobileone_cli.cli import main\n"
            f"sys.argv = ['mobileone', '--trust-file', {str(path)!r}, 'convert', {str(path)!r}, "
            f"{str(tmp_path / 'o.pth')!r}]\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "even as a trusted file" in proc.stderr and "mmengine" in proc.stderr
    assert "without trusting it" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.pth").exists()


def test_lightning_style_file(tmp_path, run_cli):
    """{'state_dict' under 'model.', 'hyper_parameters' (a dict subclass of a package that is
    not installed), optimizer and scheduler states}: loads without trust, prefix stripped."""
    import types

    from mobileone_cli.models.synthetic import random_state_dict

    name = f"fake_lightning_{os.getpid()}"
    mod = types.ModuleType(name)
    exec("class AttributeDict(dict):\n    pass\n", mod.__dict__)
    mod.AttributeDict.__module__ = name
    sys.modules[name] = mod
    train = random_state_dict(TIMM_ARCH, layout="timm", seed=3)
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.ones(3)
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    src = tmp_path / "epoch=3-step=40.ckpt"
    try:
        torch.save({"epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.4.0",
                    "state_dict": {"model." + k: v for k, v in train.items()},
                    "hyper_parameters": mod.AttributeDict(lr=0.1, arch="mobileone_s1"),
                    "optimizer_states": [opt.state_dict()],
                    "lr_schedulers": [sched.state_dict()], "loops": {}, "callbacks": {}}, src)
    finally:
        del sys.modules[name]
    ck = load_checkpoint(str(src))
    assert ck.stripped_prefix == "model." and ck.stubbed == [f"{name}.AttributeDict"]
    assert ck.extras["hyper_parameters"] == {"lr": 0.1, "arch": "mobileone_s1"}
    res = run_cli("convert", src, tmp_path / "deploy.pth")
    assert res.exit_code == 0, res.output
    out = _load(tmp_path / "deploy.pth")
    assert shapes(out) == dict(_expected("timm")["deploy_keys"])  # timm's, without 'model.'
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    train_net = MobileOne(TIMM_ARCH).double().eval()
    train_net.load_state_dict(remap(train, TIMM_ARCH, "timm", "apple", "train"))
    with torch.no_grad():
        ref = train_net(x.double())
    got = run_deploy(out, TIMM_ARCH, "timm", x)
    assert rel(got, ref) < 1e-6


def test_inspect_says_where_the_ema_weights_are(run_cli):
    import json

    r = json.loads(run_cli("inspect", FIXTURES / "mmpretrain" / "epoch_2.pth", "--json").stdout)
    assert "'state_dict' holds the EMA weights" in r["ema_note"]
    assert r["stubbed_globals"] == ["mmengine.logging.history_buffer.HistoryBuffer"]
    r = json.loads(run_cli("inspect", FIXTURES / "timm" / "last.pth.tar", "--json").stdout)
    assert r["ema_note"] == "" and r["stubbed_globals"] == ["argparse.Namespace"]


def test_the_docs_example_shows_the_loading_notes():
    """docs/checkpoints.md runs the committed mmpretrain file (tests/test_docs.py checks the
    output is still what the page shows); the notes it shows are the ones that matter here."""
    doc = (Path(__file__).parent.parent / "docs" / "checkpoints.md").read_text()
    block = doc.split("$ mobileone convert tests/fixtures/mmpretrain/epoch_2.pth", 1)[1]
    block = " ".join(block.split("```", 1)[0].split())  # notes wrap at 80 columns
    assert "note: mmengine EMAHook file: 'state_dict' holds the EMA weights" in block
    assert "inert placeholders (mmengine.logging.history_buffer.HistoryBuffer)" in block
    assert "check: equivalent" in block
