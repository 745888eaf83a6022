"""``mobileone inspect``: what a checkpoint (MobileOne or not) or an ONNX file holds.

Files are built with the independent key rules of test_layouts; parameter counts are checked against
the counts of Apple's, mmpretrain's and timm's models at 224x224 (they agree), typed in below.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mobileone_cli.arch.specs import get_arch
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.jobs.inspect import inspect_file
from mobileone_cli.models.synthetic import random_state_dict

from .conftest import COUNTS, LAYOUTS, TINY, as_layout

# Published counts at 224x224: params train / deploy, head included.
PARAMS = {"s0": (5_293_272, 2_078_504), "s1": (4_825_192, 4_764_840),
          "s4": (14_951_248, 14_838_352)}


@pytest.fixture(scope="module")
def s1():
    spec = get_arch("s1")
    train = random_state_dict(spec, seed=21)
    return {"train": train, "deploy": fuse_state_dict(train, spec)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", ["train", "deploy"])
def test_every_layout_and_form(layout, form, s1, tmp_path):
    sd = as_layout(s1[form], layout)
    path = tmp_path / f"{layout}_{form}.safetensors"
    save_checkpoint(str(path), sd)
    r = inspect_file(str(path), health=False)  # the structure only; tests/test_health.py: health
    assert (r["file_format"], r["layout"], r["form"], r["variant"], r["num_classes"]) == \
        ("safetensors", layout, form, "s1", 1000)
    assert (r["prefix"], r["wrapper"], r["dtype"], r["unknown_keys"]) == ("", None, "float32", [])
    assert r["keys"] == r["mobileone_keys"] == COUNTS["s1"][form == "deploy"]
    assert r["params"] == PARAMS["s1"][form == "deploy"]
    assert r["size"] == os.path.getsize(path)


@pytest.mark.parametrize("arch", ["s0", "s4"])
def test_param_counts_match_reference(arch, tmp_path):
    spec = get_arch(arch)
    for form in ("train", "deploy"):
        path = tmp_path / f"{arch}_{form}.safetensors"
        save_checkpoint(str(path), random_state_dict(spec, form=form, layout="timm", seed=1,
                                                         stats="random"))
        r = inspect_file(str(path), health=False)
        assert (r["variant"], r["form"], r["params"]) == (arch, form, PARAMS[arch][form == "deploy"])
        assert r["keys"] == COUNTS[arch][form == "deploy"]


def test_safetensors_inspect_never_imports_torch(s1, tmp_path):
    path = tmp_path / "timm.safetensors"
    save_checkpoint(str(path), as_layout(s1["deploy"], "timm"), metadata={"arch": "s1"})
    code = ("import sys\n"
            "from mobileone_cli.cli import main\n"
            "try:\n"
            f"    main(['inspect', {str(path)!r}, '--json'])\n"
            "except SystemExit as exc:\n"
            "    assert exc.code in (0, None), exc.code\n"
            "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_FREE')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    body, marker = out.stdout.rsplit("\n", 2)[0], out.stdout.strip().splitlines()[-1]
    assert marker == "TORCH_FREE"
    report = json.loads(body)
    assert (report["layout"], report["form"], report["variant"]) == ("timm", "deploy", "s1")
    assert report["metadata"] == {"arch": "s1"}


def test_wrapped_prefixed_fp16_with_unknown_keys(s1, tmp_path, run_cli):
    sd = {"backbone." + k: v.half() if v.is_floating_point() else v
          for k, v in as_layout(s1["train"], "apple").items() if not k.startswith("linear.")}
    sd["neck.conv.weight"] = torch.zeros(8, 1280, 1, 1)
    sd["bbox_head.fc.weight"] = torch.zeros(4, 8)
    path = tmp_path / "detector.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": {"module." + k: v for k, v in sd.items()},
                "optimizer": {}}, path)
    r = inspect_file(str(path))
    assert (r["file_format"], r["wrapper"], r["stripped_prefix"]) == ("torch-zip", "state_dict",
                                                                      "module.")
    assert r["other_entries"] == ["meta", "optimizer"]
    assert (r["layout"], r["form"], r["variant"], r["num_classes"], r["prefix"], r["dtype"]) == \
        ("apple", "train", "s1", 0, "backbone.", "float16")
    assert r["unknown_keys"] == ["neck.conv.weight", "bbox_head.fc.weight"]
    assert r["keys"] == 562 - 2 + 2 and r["mobileone_keys"] == 560
    assert r["params"] == PARAMS["s1"][0] - (1280 * 1000 + 1000)  # headless
    res = run_cli("inspect", path)
    assert res.exit_code == 0, res.output
    for text in ("'state_dict' entry", "'module.'", "'backbone.'", "float16", "none (headless)",
                 "2: neck.conv.weight, bbox_head.fc.weight", "apple", "train"):
        assert text in res.stdout, text


def test_mmpretrain_backbone_only_and_placeholders(s1, tmp_path, run_cli):
    import types

    name = f"fake_mmengine_inspect_{os.getpid()}"
    mod = types.ModuleType(name)
    exec("class HistoryBuffer:\n    pass\n", mod.__dict__)
    mod.HistoryBuffer.__module__ = name
    sys.modules[name] = mod
    bare = {k[len("backbone."):]: v for k, v in as_layout(s1["deploy"], "mmpretrain").items()
            if k.startswith("backbone.")}
    path = tmp_path / "backbone.pth"
    try:
        torch.save({"state_dict": bare, "message_hub": {"x": mod.HistoryBuffer()}}, path)
    finally:
        del sys.modules[name]
    res = run_cli("inspect", path, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert (r["layout"], r["form"], r["num_classes"], r["implied_root"], r["prefix"]) == \
        ("mmpretrain", "deploy", 0, "backbone.", "")
    assert r["stubbed_globals"] == [f"{name}.HistoryBuffer"] and r["trusted"] is False
    res = run_cli("inspect", path)
    assert "backbone only" in res.stdout and "placeholders" in res.stdout


def _real_training_file(tmp_path):
    """A ResNet-like module and its SGD state after one step, saved the way scripts do."""
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sd = model.state_dict()
    path = tmp_path / "resnet_like.pth"
    torch.save({"epoch": 3, "model": sd, "optimizer": opt.state_dict(), "note": "hi"}, path)
    return path, sd, opt


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def test_any_checkpoint_is_described_not_refused(tmp_path, run_cli):
    path, sd, opt = _real_training_file(tmp_path)
    res = run_cli("inspect", path, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert (r["kind"], r["file_format"], r["wrapper"]) == ("checkpoint", "torch-zip", "model")
    assert "no MobileOne found" in r["reason"] and not r["reason"].startswith(str(path))
    assert (r["keys"], r["tensors"], r["tensor_bytes"]) == (len(sd), len(sd),
                                                            _nbytes(sd.values()))
    assert r["dtypes"] == {"float32": len(sd) - 1, "int64": 1}  # num_batches_tracked
    assert r["unknown_keys"] == list(sd) and r["hint"] is None and r["generic"]["blocks"] == 0
    momenta = [s["momentum_buffer"] for s in opt.state_dict()["state"].values()]
    rows = {row["key"]: row for row in r["structure"]}
    assert list(rows) == ["epoch", "model", "optimizer", "note"]
    assert (rows["epoch"]["kind"], rows["note"]["kind"]) == ("int 3", "str 'hi'")
    assert (rows["model"]["tensors"], rows["model"]["tensor_bytes"]) == (len(sd),
                                                                         _nbytes(sd.values()))
    assert (rows["optimizer"]["tensors"], rows["optimizer"]["tensor_bytes"]) == (
        len(momenta), _nbytes(momenta))
    assert r["health"]["verdict"] == "healthy" and r["health"]["variance"]["batchnorms"] == 1
    res = run_cli("inspect", path)
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    for needle in ("not recognised", "epoch: int 3", "optimizer: dict", "'model' entry",
                   "health: healthy"):
        assert needle in text, needle
    # the same weights in a safetensors file, one of them NaN: described, and the fault named
    bad = dict(sd)
    bad["5.weight"] = bad["5.weight"].clone()
    bad["5.weight"][0, 0] = float("nan")
    st = tmp_path / "resnet_like.safetensors"
    save_file(bad, str(st))
    r = inspect_file(str(st))
    assert (r["kind"], r["tensors"], r["tensor_bytes"]) == ("checkpoint", len(sd),
                                                            _nbytes(sd.values()))
    assert r["health"]["non_finite"] == [{"key": "5.weight", "nan": 1, "inf": 0}]
    assert run_cli("inspect", st, "--strict").exit_code == 1


def test_containers_without_a_state_dict_and_explicit_requests(tmp_path, run_cli):
    sd = {"a.weight": torch.ones(2, 3), "b.bias": torch.zeros(5, dtype=torch.float16)}
    path = tmp_path / "list.pth"
    torch.save([sd, {"step": 7}], path)
    r = inspect_file(str(path))
    assert r["kind"] == "checkpoint" and "holds a list" in r["reason"]
    assert r["structure"] == [{"key": "(top level)", "kind": "list", "items": 2, "tensors": 2,
                               "tensor_bytes": 2 * 3 * 4 + 5 * 2}]
    assert sorted(r["unknown_keys"]) == ["0.a.weight", "0.b.bias"] and r["generic"] is None
    assert r["health"]["dtypes"]["mixed"] is True
    # asking for a MobileOne that is not there stays an error
    res = run_cli("inspect", path, "--prefix", "backbone.")
    assert res.exit_code == 2 and "Traceback" not in res.output
    st = tmp_path / "other.safetensors"
    save_file(sd, str(st))
    res = run_cli("inspect", st, "--prefix", "backbone.")
    assert res.exit_code == 2 and "no MobileOne found" in res.stderr
    res = run_cli("inspect", st, "--ema")
    assert res.exit_code == 2 and "--ema" in res.stderr
    res = run_cli("inspect", tmp_path / "missing.pth")
    assert res.exit_code == 2 and "no such file" in res.stderr


def test_mobileone_blocks_elsewhere_get_the_generic_hint(tmp_path, run_cli):
    """MobileOne blocks under another model's names (as in FastViT): not a MobileOne the tool
    knows, but `convert --generic`, which the hint names, fuses them."""
    sd = random_state_dict(TINY, seed=2)
    renamed = {("net." + k[len("stage"):] if k.startswith("stage") else k): v
               for k, v in sd.items()}
    path = tmp_path / "other_net.pth"
    torch.save(renamed, path)
    r = inspect_file(str(path))
    assert r["kind"] == "checkpoint"
    assert r["generic"]["blocks"] == len(TINY.block_specs())
    assert "convert --generic" in r["hint"]
    res = run_cli("inspect", path)
    assert res.exit_code == 0 and "hint:" in res.stdout and "--generic" in res.stdout
    res = run_cli("convert", "--generic", path, tmp_path / "fused.pth")
    assert res.exit_code == 0, res.output


HAVE_ONNX = importlib.util.find_spec("onnx") is not None


@pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra is not installed")
def test_onnx_file(tmp_path, run_cli, monkeypatch):
    import warnings

    from torch import nn

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 5)

        def forward(self, image, scale):
            return self.fc(self.conv(image).mean((2, 3)) * scale)

    model = TwoInputs().eval()
    path = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, still present
        torch.onnx.export(model, (torch.randn(2, 3, 8, 8), torch.randn(2, 1)), str(path),
                          input_names=["image", "scale"], output_names=["logits"],
                          dynamic_axes={n: {0: "batch"} for n in ("image", "scale", "logits")},
                          opset_version=17, dynamo=False, do_constant_folding=False)
    res = run_cli("inspect", path, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    params = list(model.parameters())
    assert (r["kind"], r["opset"], r["checker"]) == ("onnx", 17, None)
    assert r["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 8, 8]},
                           {"name": "scale", "dtype": "float32", "shape": ["batch", 1]}]
    assert r["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 5]}]
    assert r["initializers"] == len(params)
    assert r["initializer_elements"] == sum(p.numel() for p in params)
    res = run_cli("inspect", path)
    assert res.exit_code == 0 and "image: float32 [batch, 3, 8, 8]" in res.stdout
    assert "ai.onnx 17" in res.stdout
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    res = run_cli("inspect", bad)
    assert res.exit_code == 2 and "not a readable ONNX model" in res.stderr
    monkeypatch.setitem(sys.modules, "onnx", None)  # import now raises ImportError
    res = run_cli("inspect", path)
    assert res.exit_code == 2 and "onnx" in res.stderr and "pip install" in res.stderr
    assert "Traceback" not in res.output
