"""Issue 3: ``mobileone inspect``: what a checkpoint holds, as a table or JSON.

Files are built with the independent key rules of test_layouts; parameter counts are checked against
the numbers of section 5 of shared/reference/mobileone.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mobileone_cli.spec.arch import get_arch
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.inspection import inspect_file
from mobileone_cli.models.synthetic import random_state_dict

from .test_layouts import COUNTS, LAYOUTS, as_layout

# Section 5: params train / deploy, head included.
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
    r = inspect_file(str(path))
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
        save_checkpoint(str(path), random_state_dict(spec, form=form, layout="timm", seed=1))
        r = inspect_file(str(path))
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


def test_not_a_mobileone_and_bad_options(tmp_path, run_cli):
    path = tmp_path / "resnet.safetensors"
    save_checkpoint(str(path), {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(3)})
    res = run_cli("inspect", path)
    assert res.exit_code == 2
    assert "no MobileOne found" in res.stderr and len(res.stderr.strip().splitlines()) <= 2
    assert "Traceback" not in res.output
    res = run_cli("inspect", path, "--ema")
    assert res.exit_code == 2 and "--ema" in res.stderr
    res = run_cli("inspect", tmp_path / "missing.pth")
    assert res.exit_code == 2 and "no such file" in res.stderr
