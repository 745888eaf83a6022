"""The public Python API: every name imports lazily, paths may be str or os.PathLike, and
errors speak in API terms (force=True, not only --force)."""
from __future__ import annotations

import pathlib

import pytest
import torch

import mobileone_cli as mo


def test_every_api_function_takes_pathlib_paths(tmp_path: pathlib.Path):
    arch = mo.get_arch("s0")
    src = tmp_path / "train.pth"
    mo.save_checkpoint(src, mo.random_state_dict(arch, seed=0))
    assert mo.load_checkpoint(src).state_dict
    dst = tmp_path / "deploy.safetensors"
    res = mo.convert_file(src, dst, input_size=(64, 64))
    assert res.verdict.passed and dst.exists()
    assert mo.inspect_file(dst)["form"] == "deploy"
    assert mo.stats_for_checkpoint(dst).form == "deploy"
    assert mo.verify_files(src, dst, input_size=(64, 64)).passed
    assert mo.open_source(src).detection.arch.name == "s0"
    out = tmp_path / "out"
    out.mkdir()
    items = mo.convert_many(mo.plan_batch([src], out), input_size=(64, 64))
    assert [it.status for it in items] == ["ok"]
    g = mo.convert_generic_file(src, tmp_path / "generic.pth")
    assert g.report.blocks


def test_library_errors_name_the_python_argument(tmp_path):
    arch = mo.get_arch("s0")
    src = tmp_path / "train.pth"
    mo.save_checkpoint(src, mo.random_state_dict(arch, seed=0))
    with pytest.raises(mo.BadInput) as info:
        mo.save_checkpoint(src, {"x": torch.zeros(1)})
    assert "force=True" in info.value.hint
