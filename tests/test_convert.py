"""`mobileone convert` of Apple-layout files: keys, order, shapes and numbers against independent
computations, formats, wrappers, destinations.

Expected key lists are derived in tests/conftest.py from the reference tables, not from the package.
"""
from __future__ import annotations

import json

import pytest
import torch

from mobileone_cli.io.read import load_checkpoint
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.specs import get_arch

from .conftest import expected_deploy_keys, first_quick, fold_by_hand


# s0 with convert's default check (224 px); the larger variants check at 64 px, where their last
# stage still sees 2x2 pixels: fusion does not depend on the input size, borders and padding do.
@pytest.mark.parametrize("arch,size", first_quick(("s0", 224), ("s1", 64), ("s2", 64),
                                                   ("s3", 64), ("s4", 64)))
def test_convert_apple_train_checkpoint(arch, size, write_ckpt, run_cli, tmp_path):
    src = write_ckpt(arch, seed=31)  # test_verify.py's networks: made once per process
    dst = str(tmp_path / f"{arch}_deploy.pth")
    res = run_cli("convert", src, dst, *(() if size == 224 else ("--input-size", str(size))))
    assert res.exit_code == 0, res.output
    out = torch.load(dst, weights_only=True)
    # Bare state dict, exactly Apple's deploy keys, in Apple's order, with the right shapes.
    assert [(k, tuple(v.shape)) for k, v in out.items()] == expected_deploy_keys(arch)

    spec = get_arch(arch)
    train_sd = torch.load(src, weights_only=True)
    # Every weight is the independent float64 fusion, rounded once to float32 (<= 1 ulp).
    exact = fold_by_hand(train_sd, spec)
    for k, v in out.items():
        ulp = torch.finfo(torch.float32).eps * exact[k].abs().clamp_min(1e-30)
        assert v.dtype == torch.float32 and bool(((v.double() - exact[k]).abs() <= ulp).all()), k
    # ...and that fusion computes the train model's function (float64: no rounding to hide).
    with torch.device("meta"):  # no random init: every tensor is assigned below
        train, deploy = MobileOne(spec), MobileOne(spec, deploy=True)
    train.load_state_dict(train_sd, strict=True, assign=True)
    deploy.load_state_dict(exact, strict=True, assign=True)
    train.double()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7),
                    dtype=torch.float64)
    with torch.no_grad():
        ref = train.eval()(x)
        got = deploy.eval()(x)
    rel = float((ref - got).abs().max() / ref.abs().max())
    assert rel < 1e-10, rel
    assert "max rel diff" in res.stdout


def test_safetensors_in_and_out_with_metadata(write_ckpt, run_cli, tmp_path):
    from safetensors import safe_open

    src = write_ckpt("s2", name="s2_train.safetensors")
    dst = str(tmp_path / "s2_deploy.safetensors")
    res = run_cli("convert", src, dst)
    assert res.exit_code == 0, res.output
    with safe_open(dst, framework="pt") as fh:
        meta = fh.metadata()
        keys = list(fh.keys())
    assert meta["arch"] == "s2" and meta["layout"] == "apple" and meta["form"] == "deploy"
    assert "mobileone_cli" in meta
    assert sorted(keys) == sorted(k for k, _ in expected_deploy_keys("s2"))
    ck = load_checkpoint(dst)
    assert ck.file_format == "safetensors" and ck.metadata["arch"] == "s2"


@pytest.mark.parametrize("wrap,name", [
    (lambda sd: {"state_dict": sd}, "wrapped.pth.tar"),
    (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, "ddp.pt"),
    (lambda sd: sd, "plain.bin"),
])
def test_wrappers_and_module_prefix_are_unwrapped(wrap, name, write_ckpt, run_cli, tmp_path):
    src = write_ckpt("s0", name=name, wrap=wrap)
    dst = str(tmp_path / "out.pth")
    res = run_cli("convert", src, dst)
    assert res.exit_code == 0, res.output
    assert len(torch.load(dst, weights_only=True)) == 88


def test_legacy_torch_format_is_read(tmp_path, run_cli):
    spec = get_arch("s1")
    src = str(tmp_path / "legacy.pth")
    torch.save(random_state_dict(spec, seed=2), src, _use_new_zipfile_serialization=False)
    res = run_cli("convert", src, str(tmp_path / "o.pth"))
    assert res.exit_code == 0, res.output


def test_existing_destination_needs_force(write_ckpt, run_cli, tmp_path):
    src = write_ckpt("s1")
    dst = tmp_path / "exists.pth"
    dst.write_bytes(b"precious")
    res = run_cli("convert", src, str(dst))
    assert res.exit_code == 2
    assert "already exists" in res.stderr and "Traceback" not in res.output
    assert dst.read_bytes() == b"precious"
    res = run_cli("convert", src, str(dst), "--force")
    assert res.exit_code == 0
    assert len(torch.load(str(dst), weights_only=True)) == 88
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_deploy_input_is_passed_through_with_a_note(write_ckpt, run_cli, tmp_path):
    src = write_ckpt("s3", form="deploy")
    dst = str(tmp_path / "again.pth")
    res = run_cli("convert", src, dst)
    assert res.exit_code == 0, res.output
    assert "already deploy-form" in res.stdout
    a, b = torch.load(src, weights_only=True), torch.load(dst, weights_only=True)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_arch_option_detects_mismatch(write_ckpt, run_cli, tmp_path):
    src = write_ckpt("s1")
    res = run_cli("convert", src, str(tmp_path / "o.pth"), "--arch", "s2")
    assert res.exit_code == 2 and "not s2" in res.stderr
    assert not (tmp_path / "o.pth").exists()
    res = run_cli("convert", src, str(tmp_path / "o.pth"), "--arch", "s1", "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["arch"] == "s1"
