"""Blocks are named as the file names them, the canonical (Apple) name beside it."""
from __future__ import annotations

import json

import pytest
import torch

from mobileone_cli.arch.layouts import block_names, in_layout, stage_names
from mobileone_cli.arch.specs import get_arch
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.jobs.convert import convert_file
from mobileone_cli.io.read import load_checkpoint


def test_names_follow_each_layout():
    arch = get_arch("s0")
    assert block_names(arch, "timm")["stage2.5"] == "stages.1.5"
    assert block_names(arch, "mmpretrain")["stage2.5"] == "backbone.stage2.5"
    assert block_names(arch, "timm")["linear"] == "head.fc"
    assert stage_names(arch, "timm")["stage2"] == "stages.1"
    assert in_layout("stage2.5", block_names(arch, "timm")) == "stages.1.5 (stage2.5)"
    assert in_layout("stage2.5", block_names(arch, "apple")) == "stage2.5"


@pytest.mark.slow
def test_tampered_timm_block_is_named_in_timm_terms(write_ckpt, tmp_path, run_cli):
    train = write_ckpt("s0")
    deploy = str(tmp_path / "s0_timm.pth")
    convert_file(train, deploy, layout_out="timm", force=True, input_size=(64, 64))
    sd = dict(load_checkpoint(deploy).state_dict)
    sd["stages.1.5.reparam_conv.bias"] = sd["stages.1.5.reparam_conv.bias"] + 1.0
    bad = str(tmp_path / "bad_timm.pth")
    save_checkpoint(bad, sd, force=True)

    res = run_cli("verify", train, bad, "--input-size", "64", "--batch", "1")
    assert res.exit_code == 1
    assert "first block that breaks: stages.1.5 (stage2.5)" in res.stdout
    assert "stages.1 (stage2)" in res.stdout  # the per-stage table
    # The failure is said once: the FAIL line of the report, not again as an error line.
    assert res.output.count("NOT equivalent") == 1 and "error:" not in res.stderr
    quiet = run_cli("-q", "verify", train, bad, "--input-size", "64", "--batch", "1")
    assert quiet.exit_code == 1 and quiet.output.count("NOT equivalent") == 1

    res = run_cli("verify", train, bad, "--input-size", "64", "--batch", "1", "--json")
    doc = json.loads(res.stdout)
    assert doc["first_bad_block"]["name"] == "stage2.5"
    assert doc["first_bad_block"]["label"] == "stages.1.5 (stage2.5)"
    assert "stages.1.5 (stage2.5)" in doc[doc["decided_in"]]["bad_blocks_labels"]
    assert any(s["label"] == "stages.1 (stage2)" and not s["within"] for s in doc["stages"])
    assert torch.isfinite(torch.tensor(doc["fp32"]["output"]["max_rel"]))
