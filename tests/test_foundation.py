"""Issue 2: the model, the state-dict fusion and `mobileone convert` for Apple checkpoints.

Expected key lists and shapes are derived here, independently of the package, from the reference
tables (section 1 and 3 of shared/reference/mobileone.md).
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from mobileone_cli.spec.arch import get_arch
from mobileone_cli.io.read import load_checkpoint
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.models.mobileone import MobileOne, build_model, deploy_copy
from mobileone_cli.models.synthetic import random_state_dict

from .conftest import ARCHS, fold_by_hand

# Reference section 1, typed in again: stem C, stage widths, whether the variant has SE.
REF = {"s0": (48, (48, 128, 256, 1024), False), "s1": (64, (96, 192, 512, 1280), False),
       "s2": (64, (96, 256, 640, 2048), False), "s3": (64, (128, 320, 768, 2048), False),
       "s4": (64, (192, 448, 896, 2048), True)}


def expected_deploy_keys(arch: str):
    """[(key, shape)] of Apple's mobileone(variant, inference_mode=True), from the reference."""
    stem, widths, se = REF[arch]
    out = [("stage0.reparam_conv.weight", (stem, 3, 3, 3)), ("stage0.reparam_conv.bias", (stem,))]
    c = stem
    for s, (w, pairs) in enumerate(zip(widths, (2, 8, 10, 1)), start=1):
        for p in range(pairs):
            has_se = se and ((s == 3 and p >= 5) or s == 4)
            for j, (cin, cout, groups, k) in ((2 * p, (c, c, c, 3)), (2 * p + 1, (c, w, 1, 1))):
                pre = f"stage{s}.{j}"
                if has_se:
                    r = int(cout * 0.0625)
                    out += [(f"{pre}.se.reduce.weight", (r, cout, 1, 1)),
                            (f"{pre}.se.reduce.bias", (r,)),
                            (f"{pre}.se.expand.weight", (cout, r, 1, 1)),
                            (f"{pre}.se.expand.bias", (cout,))]
                out += [(f"{pre}.reparam_conv.weight", (cout, cin // groups, k, k)),
                        (f"{pre}.reparam_conv.bias", (cout,))]
            c = w
    out += [("linear.weight", (1000, widths[-1])), ("linear.bias", (1000,))]
    return out


def test_expected_key_counts_match_reference():
    assert [len(expected_deploy_keys(a)) for a in ARCHS] == [88, 88, 88, 88, 136]


@pytest.mark.parametrize("arch", ARCHS)
def test_convert_apple_train_checkpoint(arch, write_ckpt, run_cli, tmp_path):
    src = write_ckpt(arch, seed=ARCHS.index(arch) + 1)
    dst = str(tmp_path / f"{arch}_deploy.pth")
    res = run_cli("convert", src, dst)
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
    train = MobileOne(spec).double()
    train.load_state_dict(train_sd, strict=True)
    deploy = MobileOne(spec, deploy=True).double()
    deploy.load_state_dict(exact, strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        ref = train.eval()(x)
        got = deploy.eval()(x)
    rel = float((ref - got).abs().max() / ref.abs().max())
    assert rel < 1e-10, rel
    assert "max rel diff" in res.stdout


def _functional_block(x, sd, pre, stride, groups, eps, se):
    """One train-form block written directly with torch.nn.functional, float64."""
    def bn(y, p):
        return F.batch_norm(y, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"],
                            sd[p + "bias"], training=False, eps=eps)

    k = sd[f"{pre}.rbr_conv.0.conv.weight"].shape[-1]
    out = 0
    n = 0
    while f"{pre}.rbr_conv.{n}.conv.weight" in sd:
        out = out + bn(F.conv2d(x, sd[f"{pre}.rbr_conv.{n}.conv.weight"], None, stride, k // 2,
                                1, groups), f"{pre}.rbr_conv.{n}.bn.")
        n += 1
    if f"{pre}.rbr_scale.conv.weight" in sd:
        out = out + bn(F.conv2d(x, sd[f"{pre}.rbr_scale.conv.weight"], None, stride, 0, 1, groups),
                       f"{pre}.rbr_scale.bn.")
    if f"{pre}.rbr_skip.weight" in sd:
        out = out + bn(x, f"{pre}.rbr_skip.")
    if se:
        s = out.mean((2, 3), keepdim=True)
        s = F.conv2d(F.relu(F.conv2d(s, sd[f"{pre}.se.reduce.weight"], sd[f"{pre}.se.reduce.bias"])),
                     sd[f"{pre}.se.expand.weight"], sd[f"{pre}.se.expand.bias"])
        out = out * torch.sigmoid(s)
    return F.relu(out)


@pytest.mark.parametrize("arch", ["s0", "s4"])
def test_train_model_matches_functional_reference(arch):
    """Our train model itself is checked against a from-scratch functional forward (fp64)."""
    spec = get_arch(arch)
    sd = random_state_dict(spec, seed=3, dtype=torch.float64)
    model = MobileOne(spec).double().eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = x
    for b in spec.block_specs():
        y = _functional_block(y, sd, b.name, b.stride, b.groups, 1e-5, b.has_se)
    y = F.linear(y.mean((2, 3)), sd["linear.weight"], sd["linear.bias"])
    with torch.no_grad():
        got = model(x)
    assert float((got - y).abs().max() / y.abs().max()) < 1e-12


@pytest.mark.parametrize("arch", ARCHS)
def test_fp64_fusion_is_exact(arch):
    spec = get_arch(arch)
    sd = random_state_dict(spec, seed=11, dtype=torch.float64)
    fused = fuse_state_dict(sd, spec)
    assert all(v.dtype == torch.float64 for v in fused.values())
    train = MobileOne(spec).double().eval()
    train.load_state_dict(sd, strict=True)
    deploy = MobileOne(spec, deploy=True).double().eval()
    deploy.load_state_dict(fused, strict=True)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ref, got = train(x), deploy(x)
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-12


def test_fusion_arithmetic_in_float64_then_cast_once():
    """fp32 fusion must equal the fp64 fusion of the same numbers rounded once to fp32."""
    spec = get_arch("s0")
    sd32 = random_state_dict(spec, seed=5)
    sd64 = {k: (v.double() if v.is_floating_point() else v) for k, v in sd32.items()}
    f32, f64 = fuse_state_dict(sd32, spec), fuse_state_dict(sd64, spec)
    for k in f32:
        assert f32[k].dtype == torch.float32
        assert torch.equal(f32[k], f64[k].float()), k


def test_bn_eps_is_a_parameter():
    spec = get_arch("s1")
    sd = random_state_dict(spec, seed=4, dtype=torch.float64)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    train = MobileOne(spec, bn_eps=1e-3).double().eval()
    train.load_state_dict(sd)
    right = MobileOne(spec, deploy=True).double().eval()
    right.load_state_dict(fuse_state_dict(sd, spec, eps=1e-3))
    wrong = MobileOne(spec, deploy=True).double().eval()
    wrong.load_state_dict(fuse_state_dict(sd, spec, eps=1e-5))
    with torch.no_grad():
        ref = train(x)
        assert float((right(x) - ref).abs().max() / ref.abs().max()) < 1e-12
        assert float((wrong(x) - ref).abs().max() / ref.abs().max()) > 1e-6


def test_switch_to_deploy_in_place_scriptable_and_trainable():
    spec = get_arch("s4")
    model = build_model(spec).double()  # float64: the comparison is of structure, not rounding
    model.load_state_dict(random_state_dict(spec, seed=9))
    model.eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    copy_ = deploy_copy(model)
    assert not model.deploy and copy_.deploy  # the original is untouched
    same = model.switch_to_deploy()
    assert same is model and model.deploy
    assert all(p.requires_grad for p in model.parameters())
    assert all(k.endswith(("reparam_conv.weight", "reparam_conv.bias")) or ".se." in k
               or k.startswith("linear.") for k in model.state_dict())
    with torch.no_grad():
        for m in (model, copy_, torch.jit.script(model), torch.jit.trace(model, x)):
            got = m(x)
            assert got.dtype == torch.float64
            assert float((got - ref).abs().max() / ref.abs().max()) < 1e-10
    torch.jit.script(build_model("s0"))  # the train form scripts too


def test_headless_model_returns_feature_map():
    spec = get_arch("s1", num_classes=0)
    model = MobileOne(spec).eval()
    assert not any(k.startswith("linear") for k in model.state_dict())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)


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


def test_demo_and_version(run_cli, tmp_path):
    res = run_cli("demo", "--dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "OK" in res.stdout
    assert os.path.exists(tmp_path / "mobileone_s0.pth")
    res = run_cli("--version")
    assert res.exit_code == 0 and "mobileone" in res.stdout


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mobileone_cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert "convert" in out.stdout


def test_builtin_table_reads_the_same_as_yaml_and_matches_the_reference():
    """builtin.yaml is read with json for speed; a YAML parser must see the same table."""
    import yaml

    from mobileone_cli.spec.arch import _BUILTIN_YAML, builtin_archs

    with open(_BUILTIN_YAML, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    for name, spec in builtin_archs().items():
        assert raw[name]["widths"] == list(spec.widths)
        assert raw[name]["se_blocks"] == list(spec.se_blocks)
        assert raw[name]["conv_branches"] == list(spec.conv_branches)
        stem, widths, se = REF[name]
        assert (spec.stem_channels, spec.widths, any(spec.se_blocks)) == (stem, widths, se)
