"""``--blocks FILE.yaml``: an in-house naming described as data converts without code, checked
like a model config; and ``inspect`` lists blocks per family and type, naming any left alone.

The third-party network is the mobileone-pytorch package's MobileOneNetwork, written by that
package (tests/fixtures/family/mobileone_pytorch.*, see make_family_fixtures.py); its own
``reparametrize()`` builds a new nn.Sequential, exported there with torch.export, into which the
converted file loads strictly once each block's path is mapped to that Sequential's names.
"""
from __future__ import annotations

import json
import os
import re

import pytest
import torch

from mobileone_cli.arch.blocks_file import parse_blocks
from mobileone_cli.errors import BadInput
from mobileone_cli.fuse.generic_fuse import fuse_generic
from mobileone_cli.io.blocksfile import load_blocks
from mobileone_cli.rules.tolerances import DEFAULT_ATOL, DEFAULT_RTOL, SENSITIVITY_FACTOR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILY = os.path.join(ROOT, "tests", "fixtures", "family")
BLOCKS = os.path.join(ROOT, "examples", "blocks_mobileone_pytorch.yaml")
SRC = os.path.join(FAMILY, "mobileone_pytorch.safetensors")


def _their_name(key: str) -> str:
    """Our key -> the key in mobileone-pytorch's reparametrize() Sequential."""
    m = re.fullmatch(r"_features\._stage(\d+)\.(\d+)\._mobileone_block_(up|down)"
                     r"\.reparam_conv\.(weight|bias)", key)
    if m:
        return f"0.{int(m.group(1)) - 1}.{m.group(2)}.block_{m.group(3)}.{m.group(4)}"
    return {"_linear.weight": "3.weight", "_linear.bias": "3.bias"}[key]


def test_blocks_file_makes_a_third_party_naming_convert(run_cli, tmp_path):
    dst = str(tmp_path / "deploy.pth")
    res = run_cli("convert", "--generic", SRC, dst)
    assert res.exit_code == 2 and "--blocks" in res.stderr  # unknown without the file
    res = run_cli("convert", "--generic", "--blocks", BLOCKS, SRC, dst, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert {b["block"] for b in report["blocks"]} == {"MobileOneBlockUp", "MobileOneBlockDown"}
    assert report["fused_blocks"] == 8 and report["max_rel_diff"] < 1e-6

    exp = torch.load(os.path.join(FAMILY, "mobileone_pytorch.expected.pth"), weights_only=True)
    out = torch.load(dst, weights_only=True)
    theirs = {_their_name(k): v for k, v in out.items()}
    assert sorted((k, list(v.shape)) for k, v in theirs.items()) == sorted(
        (k, s) for k, s in exp["deploy_keys"])
    net = torch.export.load(os.path.join(FAMILY, "mobileone_pytorch.pt2")).module()
    net.load_state_dict(theirs, strict=True)
    with torch.no_grad():
        got = net(exp["input"]).double()
    ref = exp["calibrated_ref64"]
    own = float((exp["calibrated_deploy32"].double() - ref).abs().max())
    bound = DEFAULT_ATOL + DEFAULT_RTOL * float(ref.abs().max()) + SENSITIVITY_FACTOR * own
    assert float((got - ref).abs().max()) <= bound


def test_inspect_lists_families_and_uses_the_blocks_file(run_cli):
    res = run_cli("inspect", SRC, "--no-health", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["generic"]["blocks"] == 0
    res = run_cli("inspect", SRC, "--no-health", "--json", "--blocks", BLOCKS)
    gen = json.loads(res.stdout)["generic"]
    assert gen["blocks"] == 8
    assert sorted((t["block"], t["count"], t["action"]) for t in gen["types"]) == [
        ("MobileOneBlockDown", 4, "will fuse"), ("MobileOneBlockUp", 4, "will fuse")]
    res = run_cli("inspect", os.path.join(FAMILY, "timm_fastvit_mci.safetensors"), "--no-health",
                  "--json")
    gen = json.loads(res.stdout)["generic"]
    assert {(t["family"], t["block"], t["count"]) for t in gen["types"]} == {
        ("FastViT/MobileCLIP", "MobileOneBlock", 7), ("FastViT/MobileCLIP", "RepMixer", 4),
        ("FastViT/MobileCLIP", "ReparamLargeKernelConv", 3), ("FastViT/MobileCLIP", "RepCPE", 1)}


def test_a_fusable_block_left_alone_is_named(run_cli, tmp_path):
    """A RepCPE-shaped conv outside any FastViT is not fused, and both commands say so."""
    from safetensors.torch import load_file

    sd = {k: v for k, v in load_file(os.path.join(FAMILY, "timm_repvgg.safetensors")).items()}
    sd["pos.pos_enc.weight"] = torch.randn(8, 1, 7, 7)
    sd["pos.pos_enc.bias"] = torch.randn(8)
    out, report = fuse_generic(sd)
    assert [(p, b) for p, b, _ in report.left_alone] == [("pos", "RepCPE (timm)")]
    assert out["pos.pos_enc.weight"] is sd["pos.pos_enc.weight"]
    src = str(tmp_path / "net.pth")
    torch.save(sd, src)
    res = run_cli("convert", "--generic", src, str(tmp_path / "d.pth"))
    assert res.exit_code == 0 and "not fused:" in res.stdout and "pos: RepCPE" in res.stdout
    res = run_cli("inspect", src, "--no-health")
    assert "left alone: pos:" in res.stdout and "RepVggBlock" in res.stdout


def _parse(blocks):
    return parse_blocks({"blocks": blocks}, where="b.yaml")


GOOD = {"family": "f", "block": "B", "fused": "fused",
        "branches": [{"name": "convs.{n}", "kind": "conv_bn"}, {"name": "skip", "kind": "bn"}]}


@pytest.mark.parametrize("edit, match", [
    (lambda b: b.pop("fused"), "blocks\\[0\\]: needs 'fused'"),
    (lambda b: b.update(fuse="x"), "blocks\\[0\\].fuse: unknown field"),
    (lambda b: b["branches"][0].update(kind="conv_bnn"), "is not one of conv_bn"),
    (lambda b: b["branches"][0].update(name="a..b"), "is not a module path"),
    (lambda b: b["branches"][0].update(name="a.{n}.{n}"), "is not a module path"),
    (lambda b: b.update(fused="x.{n}"), "fused: 'x.{n}' is not a module path"),
    (lambda b: b["branches"][0].update(kernel=2), "must be odd"),
    (lambda b: b["branches"][1].update(kernel=1), "only a conv_bn branch has a fixed kernel"),
    (lambda b: b["branches"][1].update(conv="c"), "only a conv_bn branch has a conv module"),
    (lambda b: b["branches"][0].update(sign=2), "must be 1 or -1"),
    (lambda b: b["branches"][0].update(scaled="yes"), "must be true or false"),
    (lambda b: b["branches"][1].update(name="convs.{n}"), "two branches share a name"),
    (lambda b: b.update(required=["nope"]), "'nope' is not one of its branches"),
    (lambda b: b["branches"].append({"name": "m", "kind": "block", "of": "Nope"}),
     "no block type 'Nope'"),
    (lambda b: b.update(branches=[]), "must be a list of 1 to 16 branches"),
    (lambda b: b["branches"][0].update(name="x" * 300), "at most 200"),
])
def test_blocks_file_problems_are_one_line(edit, match):
    import copy

    bad = copy.deepcopy(GOOD)
    edit(bad)
    with pytest.raises(BadInput, match=match) as info:
        _parse([bad])
    assert "\n" not in info.value.message and info.value.message.startswith("b.yaml: ")


def test_blocks_file_reads_like_a_config(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("blocks: [")
    with pytest.raises(BadInput, match="unreadable YAML at line 1"):
        load_blocks(str(p))
    p.write_text("blocks: []\n")
    with pytest.raises(BadInput, match="must be a list of 1 to 64"):
        load_blocks(str(p))
    p.write_text("x" * (1 << 20 + 1))
    with pytest.raises(BadInput, match="at most"):
        load_blocks(str(p))
    with pytest.raises(BadInput, match="no such blocks file"):
        load_blocks(str(tmp_path / "missing.yaml"))
    (pat_up, pat_down) = load_blocks(BLOCKS)
    assert pat_up.naming == "mobileone-pytorch" and pat_up.branches[1].kernel == 1
    assert _parse([GOOD])[0].branches[0].name == "convs.{n}"


def test_cli_blocks_needs_generic(run_cli, tmp_path):
    res = run_cli("convert", SRC, str(tmp_path / "d.pth"), "--blocks", BLOCKS)
    assert res.exit_code == 2 and "only apply with --generic" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("blocks:\n  - {family: f}\n")
    res = run_cli("convert", "--generic", "--blocks", str(bad), SRC, str(tmp_path / "d.pth"))
    assert res.exit_code == 2 and "blocks[0]: needs 'block'" in res.stderr
    assert not os.path.exists(tmp_path / "d.pth")
