"""The health section of ``inspect`` (and of ``convert``'s summary): each fault and warning on a
file built here, its named keys and numbers checked against independent computations.

The eps sensitivity is compared with ``conftest.fold_by_hand`` (the paper's formulas, written
from scratch) at both eps values; half-precision range facts with torch's own rounding to
float16/bfloat16; dead channels with the fused kernel rows they zero.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from mobileone_cli.check.health import checkpoint_health
from mobileone_cli.jobs.inspect import inspect_file
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.layouts import remap
from mobileone_cli.rules.tolerances import EPS_PROBE, EPS_SENSITIVITY_WARN, FLUSH_WARN_SHARE

from .conftest import TINY, fold_by_hand

BLOCKS = [b.name for b in TINY.block_specs()]
# Block paths of each file layout, written out: Apple 'stage2.1' is timm 'stages.1.1'.
FILE_NAMES = {
    "apple": {n: n for n in BLOCKS},
    "timm": {n: "stem" if n == "stage0" else f"stages.{int(n[5]) - 1}{n[6:]}" for n in BLOCKS},
    "mmpretrain-backbone": {n: n for n in BLOCKS},  # backbone.stage2.1 saved without 'backbone.'
}


def healthy_sd(seed: int = 0):
    """A train-form Apple state dict with running variances in [1, 2]: the fused kernels move by
    at most (1e-3 - 1e-5) / 2 = 5e-4 between the two probe eps, below the warning level."""
    sd = random_state_dict(TINY, seed=seed, stats="random")
    g = torch.Generator().manual_seed(seed + 100)
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = 1 + torch.rand(sd[k].shape, generator=g)
    return sd


def write(sd, path):
    """The file as its own library writes it: safetensors' save_file, else torch.save."""
    path = str(path)
    if path.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    return path


def sensitivity_by_hand(sd, layout="apple"):
    """max|K(1e-3) - K(1e-5)| / max|K(1e-5)| per block, from the independent fusion, keyed by
    the block's path in ``layout`` (as the report names blocks)."""
    a, b = (fold_by_hand(sd, TINY, eps) for eps in EPS_PROBE)
    out = {}
    for name in BLOCKS:
        k = f"{name}.reparam_conv.weight"
        out[FILE_NAMES[layout][name]] = float((b[k] - a[k]).abs().max() / a[k].abs().max())
    return out


def as_file_layout(sd, layout):
    """``sd`` (Apple) in ``layout``; 'mmpretrain-backbone' is model.backbone.state_dict()."""
    if layout == "mmpretrain-backbone":
        mm = remap(sd, TINY, "apple", "mmpretrain", "train")
        return {k[len("backbone."):]: v for k, v in mm.items() if k.startswith("backbone.")}
    return remap(sd, TINY, "apple", layout, "train")


@pytest.mark.parametrize("layout, ext", [("apple", "pth"), ("timm", "safetensors"),
                                         ("mmpretrain-backbone", "pth")])
def test_healthy_file_and_its_measured_eps_sensitivity(layout, ext, tmp_path):
    sd = healthy_sd()
    r = inspect_file(write(as_file_layout(sd, layout), tmp_path / f"t.{ext}"))
    h = r["health"]
    assert (h["verdict"], h["faults"], h["warnings"]) == ("healthy", [], []), h["issues"]
    expected = sensitivity_by_hand(sd, layout)
    eps = h["eps"]
    assert eps["measured"] and eps["eps"] == list(EPS_PROBE) and eps["not_measured"] == []
    assert set(eps["blocks"]) == set(expected)
    for name in expected:
        assert eps["blocks"][name] == pytest.approx(expected[name], rel=1e-9), name
    assert 1e-4 < eps["max"] < EPS_SENSITIVITY_WARN and eps["above"] == 0
    assert eps["worst"][0]["block"] == max(expected, key=expected.get)
    assert h["variance"]["negative"] == [] and h["variance"]["zero"] == []
    assert h["variance"]["min"] == pytest.approx(min(float(v.min()) for k, v in sd.items()
                                                     if k.endswith("running_var")))
    assert h["non_finite"] == [] and h["dtypes"]["mixed"] is False


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_tiny_variance_lets_eps_decide_the_fused_kernel(ext, tmp_path, run_cli):
    sd = healthy_sd(1)
    sd["stage2.1.rbr_conv.0.bn.running_var"][5] = 1e-7
    path = write(sd, tmp_path / f"t.{ext}")
    h = inspect_file(path)["health"]
    expected = sensitivity_by_hand(sd)
    assert expected["stage2.1"] > 0.1  # the file really is eps-sensitive there, and only there
    assert [n for n, v in expected.items() if v > EPS_SENSITIVITY_WARN] == ["stage2.1"]
    for name in BLOCKS:
        assert h["eps"]["blocks"][name] == pytest.approx(expected[name], rel=1e-9), name
    assert h["eps"]["worst"][0] == {"block": "stage2.1",
                                    "change": pytest.approx(expected["stage2.1"], rel=1e-9)}
    assert h["eps"]["above"] == 1 and h["verdict"] == "warnings"
    assert [i["topic"] for i in h["issues"]] == ["eps"]
    assert "stage2.1" in h["warnings"][0] and "--bn-eps" in h["warnings"][0]
    res = run_cli("inspect", path)
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "warning: eps sensitivity" in text and "health: warnings (1 warning)" in text
    assert run_cli("inspect", path, "--strict").exit_code == 0  # warnings are not faults


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_nan_and_inf_are_faults_named_by_key(ext, tmp_path, run_cli):
    sd = healthy_sd(2)
    sd["stage2.2.rbr_conv.0.bn.running_var"][3] = math.nan
    sd["stage1.1.rbr_conv.1.conv.weight"][0, 0, 0, 0] = math.inf
    sd["stage1.1.rbr_conv.1.conv.weight"][1, 0, 0, 0] = math.nan
    path = write(sd, tmp_path / f"nan.{ext}")
    res = run_cli("inspect", path, "--json")
    assert res.exit_code == 0, res.output  # it describes: a readable file exits 0
    h = json.loads(res.stdout)["health"]
    assert {b["key"]: (b["nan"], b["inf"]) for b in h["non_finite"]} == {
        "stage2.2.rbr_conv.0.bn.running_var": (1, 0), "stage1.1.rbr_conv.1.conv.weight": (1, 1)}
    assert h["verdict"] == "faults" and len(h["faults"]) == 1
    assert "stage1.1.rbr_conv.1.conv.weight" in h["faults"][0]
    assert sorted(h["eps"]["not_measured"]) == ["stage1.1", "stage2.2"]
    assert h["eps"]["blocks"]["stage1.1"] is None  # NaN is not a number to rank
    res = run_cli("inspect", path, "--strict")
    assert res.exit_code == 1 and "health: faults (1 fault" in " ".join(res.stdout.split())
    assert res.stderr.startswith("error:") and "--strict" in res.stderr
    assert "Traceback" not in res.output
    res = run_cli("inspect", path, "--strict", "--no-health")
    assert res.exit_code == 2 and "--no-health" in res.stderr
    # convert still refuses, and says where to look
    res = run_cli("convert", path, str(tmp_path / "out.pth"))
    assert res.exit_code == 2 and "NaN/Inf" in res.stderr
    assert f"mobileone inspect {path}" in res.stderr


def test_negative_variance_is_a_fault_and_convert_and_verify_still_refuse(tmp_path, run_cli):
    sd = healthy_sd(3)
    key = "stage2.3.rbr_skip.running_var"
    sd[key][1], sd[key][4] = -0.5, -0.25
    path = write(sd, tmp_path / "neg.pth")
    h = inspect_file(path)["health"]
    assert h["variance"]["negative"] == [{"key": key, "count": 2, "min": -0.5}]
    assert h["verdict"] == "faults" and key in h["faults"][0]
    assert h["eps"]["not_measured"] == ["stage2.3"]  # the fusion refuses that block
    assert run_cli("inspect", path, "--strict").exit_code == 1
    for args in (["convert", path, str(tmp_path / "o.pth")], ["verify", path]):
        res = run_cli(*args)
        assert res.exit_code == 2 and key in res.stderr and "negative" in res.stderr
        assert f"mobileone inspect {path}" in res.stderr


def test_dead_branch_channels_and_zero_variance(tmp_path, run_cli):
    sd = healthy_sd(4)
    sd["stage2.0.rbr_scale.bn.weight"].zero_()  # a dead branch
    for bn in ("rbr_conv.0.bn", "rbr_conv.1.bn", "rbr_skip"):  # channel 2 dead in every branch
        sd[f"stage1.1.{bn}.weight"][2] = 0
    sd["stage3.0.rbr_conv.2.bn.running_var"][0] = 0
    h = inspect_file(write(sd, tmp_path / "dead.safetensors"))["health"]
    assert h["dead"]["branches"] == ["stage2.0.rbr_scale.bn"]
    assert sorted((c["key"], c["count"], c["of"]) for c in h["dead"]["channels"]) == [
        (f"stage1.1.{bn}.weight", 1, 8) for bn in ("rbr_conv.0.bn", "rbr_conv.1.bn", "rbr_skip")]
    assert h["dead"]["blocks"] == [{"block": "stage1.1", "channels": 1}]
    assert h["variance"]["zero"] == [{"key": "stage3.0.rbr_conv.2.bn.running_var", "count": 1}]
    topics = sorted(i["topic"] for i in h["issues"])
    assert topics == sorted(["dead_branch", "dead_channel", "dead_block", "zero_var", "eps"])
    assert h["verdict"] == "warnings"
    # Independently: the constant channel is an all-zero row of the fused kernel, and only it.
    fused = fold_by_hand(sd, TINY)
    rows = fused["stage1.1.reparam_conv.weight"].flatten(1).abs().amax(1)
    assert rows.eq(0).nonzero().flatten().tolist() == [2]
    # A deploy file shows the same constant channel, and says why eps cannot be measured.
    deploy = {k: v.float() for k, v in fused.items()}
    hd = inspect_file(write(deploy, tmp_path / "dead_deploy.pth"))["health"]
    assert hd["dead"]["blocks"] == [{"block": "stage1.1", "channels": 1}]
    assert hd["dead"]["branches"] == [] and hd["variance"]["batchnorms"] == 0
    assert hd["eps"]["measured"] is False and "deploy form" in hd["eps"]["reason"]


def test_half_precision_range_against_torch_rounding(tmp_path):
    sd = healthy_sd(5)
    w = sd["linear.weight"]
    w[0, 0], w[0, 1], w[0, 2], w[0, 3] = 1e5, -7e4, 65519.0, 65520.0  # 65519 rounds to 65504
    # fp16's rounding edges: a tie up to the smallest normal, the largest subnormal, a tie down
    # to zero, just above it, the smallest subnormal
    w[1, :5] = torch.tensor([2 ** -14 - 2 ** -25, 2 ** -14 - 2 ** -24, 2 ** -25, 1.5 * 2 ** -25,
                             2 ** -24])
    sd["stage0.rbr_conv.0.conv.weight"] *= 1e-7  # below half of fp16's smallest subnormal
    h = inspect_file(write(sd, tmp_path / "range.safetensors"))["health"]
    floats = [v.flatten() for v in sd.values() if v.is_floating_point()]
    x = torch.cat(floats).double()
    nonzero = int((x != 0).sum())
    for fmt, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        r = torch.cat([v.to(dtype) for v in floats]).double()  # torch's rounding, per tensor
        fin = torch.finfo(dtype)
        got = h["headroom"][fmt]
        assert got["overflow"] == int((r.isinf() & x.isfinite()).sum()), fmt
        assert got["zero_share"] == int(((x != 0) & (r == 0)).sum()) / nonzero, fmt
        assert got["subnormal_share"] == int(((x != 0) & (r.abs() < fin.tiny)).sum()) / nonzero
        assert got["max_abs"] == 1e5 and got["max_key"] == "linear.weight"
        assert got["limit"] == fin.max
    f16 = h["headroom"]["float16"]
    assert f16["overflow"] == 3 and f16["overflow_keys"] == ["linear.weight"]
    assert f16["zero_share"] > FLUSH_WARN_SHARE
    assert sorted(f16["zero_keys"]) == ["linear.weight", "stage0.rbr_conv.0.conv.weight"]
    assert h["headroom"]["bfloat16"]["overflow"] == 0
    assert h["headroom"]["bfloat16"]["zero_share"] == 0
    assert sorted(i["topic"] for i in h["issues"]) == ["overflow", "underflow"]
    assert "float16: 3 value(s) beyond its range" in h["warnings"][0]


def test_mixed_dtypes_and_convert_summary(tmp_path, run_cli):
    sd = healthy_sd(6)
    sd["stage2.0.rbr_scale.bn.weight"].zero_()
    for k in [k for k in sd if k.startswith("stage0.") and sd[k].is_floating_point()]:
        sd[k] = sd[k].half()
    path = write(sd, tmp_path / "mixed.pth")
    h = inspect_file(path)["health"]
    counts = {}
    for v in sd.values():
        name = str(v.dtype).replace("torch.", "")
        counts[name] = counts.get(name, 0) + 1
    assert h["dtypes"] == {"counts": dict(sorted(counts.items())), "mixed": True}
    assert any(i["topic"] == "dtype_mix" for i in h["issues"])
    # convert's summary carries the health facts that are not already its own notes
    res = run_cli("convert", path, str(tmp_path / "out.pth"))
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "warning: 1 dead branch(es)" in text and "stage2.0.rbr_scale.bn" in text
    assert text.count("mixed float dtypes") == 1  # the note says it; health does not repeat it
    assert "health: warnings (2 warnings)" in text and f"`mobileone inspect {path}`" in text
    res = run_cli("convert", path, str(tmp_path / "out2.pth"), "--json", "--no-verify")
    hc = json.loads(res.stdout)["health"]
    assert hc["measured"] == ["finite", "variance", "dead", "dtypes"]  # no value pass, no fusion
    assert sorted(i["topic"] for i in hc["issues"]) == ["dead_branch", "dtype_mix"]
    # a clean file adds no health line to convert's summary
    clean = write(healthy_sd(7), tmp_path / "clean.pth")
    res = run_cli("convert", clean, str(tmp_path / "out3.pth"), "--no-verify")
    assert res.exit_code == 0 and "health" not in res.stdout


def test_health_of_any_state_dict_and_unknown_parts():
    """The library function on a non-MobileOne state dict: BatchNorms are found by name."""
    import numpy as np

    values = {"bn.running_var": np.array([1.0, -2.0, 0.0], dtype=np.float32),
              "bn.weight": np.zeros(3, dtype=np.float32),
              "fc.weight": np.array([[np.inf, 1.0]], dtype=np.float64)}
    infos = {k: (str(v.dtype), v.shape) for k, v in values.items()}
    h = checkpoint_health(values, infos)
    assert h["variance"]["negative"] == [{"key": "bn.running_var", "count": 1, "min": -2.0}]
    assert h["variance"]["zero"] == [{"key": "bn.running_var", "count": 1}]
    assert h["dead"]["branches"] == ["bn"] and h["non_finite"] == [
        {"key": "fc.weight", "nan": 0, "inf": 1}]
    assert h["eps"] == {"measured": False, "reason": "not a MobileOne the tool recognises"}
    assert h["dtypes"]["mixed"] is True and h["verdict"] == "faults"
    with pytest.raises(ValueError):
        checkpoint_health(values, infos, parts=("nope",))
