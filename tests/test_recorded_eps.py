"""The BatchNorm eps that convert records in a file's metadata is used, and said, unless
--bn-eps overrides it."""
from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from mobileone_cli.jobs.convert import convert_file
from mobileone_cli.jobs.verify import verify_files
from mobileone_cli.io.source import LoadOptions


@pytest.mark.slow
def test_verify_uses_the_eps_recorded_by_convert(write_ckpt, tmp_path, run_cli):
    train = write_ckpt("s0")
    deploy = str(tmp_path / "eps3.safetensors")
    convert_file(train, deploy, eps=1e-3, force=True, input_size=(64, 64))
    with safe_open(deploy, "pt") as f:
        assert float(f.metadata()["bn_eps"]) == 1e-3

    report = verify_files(train, deploy, input_size=(64, 64), batch=1)
    assert report.passed
    assert report.train["bn_eps"] == 1e-3 and "metadata" in report.train["bn_eps_from"]
    assert any("BatchNorm eps 0.001" in n and "metadata" in n for n in report.notes)

    res = run_cli("verify", train, deploy, "--input-size", "64", "--batch", "1")
    assert res.exit_code == 0 and "0.001 (from metadata of" in res.stdout

    # --bn-eps overrides the recorded eps: the train model with eps 1e-5 is another function.
    report = verify_files(train, deploy, input_size=(64, 64), batch=1,
                          options=LoadOptions(eps=1e-5))
    assert not report.passed and report.train["bn_eps_from"] == "--bn-eps"
    res = run_cli("verify", train, deploy, "--input-size", "64", "--batch", "1", "--json",
                  "--bn-eps", "1e-5")
    assert res.exit_code == 1 and json.loads(res.stdout)["train"]["bn_eps"] == 1e-5
