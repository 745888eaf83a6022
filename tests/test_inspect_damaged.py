"""inspect on a damaged known MobileOne names the damage, gives no --generic advice, and
--strict exits 1 where convert refuses the file."""
from __future__ import annotations

import json

import pytest
import torch

from mobileone_cli.io.write import save_checkpoint


@pytest.mark.slow
def test_damaged_s0_is_named_not_generic(write_ckpt, tmp_path, run_cli):
    sd = dict(torch.load(write_ckpt("s0"), weights_only=True))
    gone = [k for k in sd if k.startswith("stage3.7.")]
    assert len(gone) == 29
    for k in gone:
        del sd[k]
    sd["stage2.2.rbr_conv.0.conv.weight"] = sd["stage2.2.rbr_conv.0.conv.weight"][..., :1, :1]
    sd["stage1.1.rbr_conv.0.conv.weight"] = sd["stage1.1.rbr_conv.0.conv.weight"].to(torch.int32)
    path = str(tmp_path / "damaged.pth")
    save_checkpoint(path, sd, force=True)

    res = run_cli("inspect", path)
    assert res.exit_code == 0
    out = " ".join(res.stdout.split())
    assert "DAMAGED apple train-form s0" in out
    assert "29 missing key(s) (stage3.7: all 29)" in out
    assert "1 wrong shape(s)" in out
    assert "stage1.1.rbr_conv.0.conv.weight is int32" in out
    assert "--generic" not in res.output and "not recognised" not in res.output
    assert "health: healthy" not in res.output

    doc = json.loads(run_cli("inspect", path, "--json").stdout)
    assert doc["kind"] == "damaged" and doc["variant"] == "s0" and len(doc["damage"]) == 3
    assert ("1 wrong shape(s): stage2.2.rbr_conv.0.conv.weight has shape [128, 1, 1, 1], "
            "expected [128, 1, 3, 3]") in doc["damage"]
    assert doc["health"]["verdict"] == "faults"

    strict = run_cli("inspect", "--strict", path)
    assert strict.exit_code == 1
    refused = run_cli("convert", path, str(tmp_path / "out.pth"))
    assert refused.exit_code == 2 and "stage3.7: all 29" in refused.stderr
