"""Hostile tensor contents: wrong keys, shapes, dtypes, values (NaN/Inf, negative or zero
variances, weights that overflow when fused), strange storages (meta, sparse, tied, views into
one flat buffer), mixed and half precisions.

Refusals name the key; what converts is checked here against an independent float64 run of the
train model (``deploy_matches_train``).
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from mobileone_cli.models.synthetic import random_state_dict

from .conftest import TINY
from .hostile import assert_refused, deploy_matches_train


pytestmark = pytest.mark.usefixtures("one_thread")


def test_resnet_state_dict(tmp_path, run_cli):
    src = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7), "bn1.running_var": torch.ones(64),
                "layer1.0.conv1.weight": torch.randn(64, 64, 3, 3),
                "fc.weight": torch.randn(1000, 512)}, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "no MobileOne found", "4 keys")


def test_two_mobileones_under_different_prefixes_need_prefix(tmp_path, tiny_sd, run_cli):
    """Never a silent pick (not the shortest prefix, not the first): 'backbone.' vs
    'teacher.'."""
    sd = {**{f"backbone.{k}": v for k, v in tiny_sd.items()},
          **{f"teacher.{k}": v for k, v in random_state_dict(TINY, seed=2).items()}}
    src = tmp_path / "two.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    assert_refused(run_cli("convert", str(src), str(dst)), str(dst), "several MobileOnes",
                   "'backbone.'", "'teacher.'")
    res = run_cli("convert", str(src), str(dst), "--prefix", "backbone.")
    assert res.exit_code == 0, res.output
    out = torch.load(dst, weights_only=True)
    ours = {k[len("backbone."):]: v for k, v in out.items() if k.startswith("backbone.")}
    assert deploy_matches_train(tiny_sd, ours) < 1e-6
    assert all(torch.equal(out[f"teacher.{k}"], v)
               for k, v in random_state_dict(TINY, seed=2).items())  # passed through


def test_other_variant_than_arch(write_ckpt, tmp_path, run_cli):
    src = write_ckpt("s1")
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", src, dst, "--arch", "s2"), dst, "s1", "s2")
    assert_refused(run_cli("convert", src, dst, "--arch", "s9"), dst, "s9")


def test_missing_and_unexpected_keys_are_named_and_counted(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    gone = ["stage1.0.rbr_conv.0.conv.weight", "stage2.1.rbr_conv.0.bn.bias",
            "stage2.1.rbr_conv.0.bn.running_mean", "stage3.1.se.reduce.bias",
            "stage2.3.rbr_skip.weight"]
    for k in gone:
        del sd[k]
    sd["stage2.1.rbr_conv.0.bn.running_std"] = torch.ones(16)
    src = tmp_path / "keys.pth"
    torch.save(sd, src)
    dst = str(tmp_path / "o.pth")
    res = run_cli("convert", str(src), dst)
    assert_refused(res, dst, "5 missing key(s)", "1 unexpected key(s)",
                   "stage2.1.rbr_conv.0.bn.running_std", "stage2.1: 2 of 6")
    assert sum(k in res.stderr for k in gone) == 5  # each named, grouped by its block


def test_wrong_shape_names_key_expected_and_found(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["stage2.2.rbr_conv.0.conv.weight"] = torch.randn(16, 1, 5, 5)
    src = tmp_path / "shape.pth"
    torch.save(sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "stage2.2.rbr_conv.0.conv.weight",
                   "[16, 1, 5, 5]", "expected [16, 1, 3, 3]")


@pytest.mark.parametrize("value,needle", [
    (torch.ones(16, dtype=torch.int64), "int64"),
    (torch.ones(16, dtype=torch.bool), "bool"),
    (torch.ones(16, dtype=torch.complex64), "complex64"),
    ("not a tensor", "str, not a tensor"),
])
def test_non_float_where_float_belongs(value, needle, tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["stage2.1.rbr_conv.0.bn.running_var"] = value
    src = tmp_path / "dtype.pth"
    torch.save({"state_dict": sd}, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "stage2.1.rbr_conv.0.bn.running_var",
                   needle)


def test_non_tensor_values_are_refused(tmp_path, tiny_sd, run_cli):
    key = "stage1.0.rbr_conv.0.bn.num_batches_tracked"
    sd = dict(tiny_sd)
    sd[key] = 7
    dst = str(tmp_path / "o.pth")
    src = tmp_path / "nbt.pth"
    torch.save({"state_dict": sd}, src)  # inside the state dict: named as not a tensor
    assert_refused(run_cli("convert", str(src), dst), dst, key, "not a tensor")
    torch.save(sd, src)  # a bare dict's non-tensors are top-level metadata: the key is missing
    assert_refused(run_cli("convert", str(src), dst), dst, key, "missing")


@pytest.mark.parametrize("key,value", [
    ("stage2.0.rbr_conv.0.conv.weight", float("nan")),
    ("stage2.0.rbr_conv.0.bn.running_mean", float("inf")),
    ("stage1.1.rbr_skip.running_var", float("nan")),
    ("linear.bias", float("-inf")),
])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_nan_and_inf_are_refused(key, value, fmt, tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    t = sd[key].clone()
    t.view(-1)[1] = value
    sd[key] = t
    src = tmp_path / f"nan.{fmt}"
    torch.save(sd, src) if fmt == "pth" else save_file(sd, str(src))
    dst = str(tmp_path / f"o.{fmt}")
    assert_refused(run_cli("convert", str(src), dst), dst, key, "NaN/Inf")


def _with_var(tiny_sd, value, key="stage2.1.rbr_conv.0.bn.running_var"):
    sd = dict(tiny_sd)
    t = sd[key].clone()
    t[3] = value
    sd[key] = t
    return sd


def test_negative_running_var_is_refused(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "neg.pth"
    torch.save(_with_var(tiny_sd, -0.25), src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "stage2.1.rbr_conv.0.bn.running_var",
                   "negative")


def test_zero_running_var_with_zero_eps_is_refused(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "zero.pth"
    torch.save(_with_var(tiny_sd, 0.0), src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst, "--bn-eps", "0"), dst,
                   "stage2.1.rbr_conv.0.bn.running_var", "divides by zero")


def test_zero_running_var_with_eps_is_exact_and_reported(tmp_path, tiny_sd, run_cli):
    """A dead channel (var == 0) is fine with eps > 0, as in PyTorch's eval mode: converted,
    reported, and the output checked here against the float64 train model."""
    sd = _with_var(tiny_sd, 0.0)
    src = tmp_path / "dead.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    assert "running_var == 0" in " ".join(res.stdout.split())
    assert deploy_matches_train(sd, dst) < 1e-6


def test_zero_eps_with_positive_variances_is_exact(tmp_path, tiny_sd, run_cli):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst), "--bn-eps", "0")
    assert res.exit_code == 0, res.output
    assert deploy_matches_train(tiny_sd, dst, eps=0.0) < 1e-6


def test_huge_weights_that_overflow_when_fused_are_refused(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    g = sd["stage2.1.rbr_conv.0.bn.weight"].clone()
    g[0] = 3e38  # finite in float32; gamma / sqrt(var + eps) is not
    sd["stage2.1.rbr_conv.0.bn.weight"] = g
    sd["stage2.1.rbr_conv.0.bn.running_var"] = torch.full((16,), 1e-3)
    src = tmp_path / "huge.pth"
    torch.save(sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "overflows float32",
                   "stage2.1.reparam_conv")


def test_meta_and_sparse_tensors(tmp_path, tiny_sd, run_cli):
    dst = str(tmp_path / "o.pth")
    for name, value, needle in [
            ("meta", torch.empty(8, 3, 3, 3, device="meta"), "meta tensor"),
            ("sparse", tiny_sd["stage0.rbr_conv.0.conv.weight"].to_sparse(), "sparse")]:
        sd = dict(tiny_sd)
        sd["stage0.rbr_conv.0.conv.weight"] = value
        src = tmp_path / f"{name}.pth"
        torch.save(sd, src)
        assert_refused(run_cli("convert", str(src), dst), dst, needle,
                       "stage0.rbr_conv.0.conv.weight")


def test_empty_and_even_stem(tmp_path, tiny_sd, run_cli):
    dst = str(tmp_path / "o.pth")
    for shape in [(0, 3, 3, 3), (8, 3, 4, 4)]:
        sd = dict(tiny_sd)
        sd["stage0.rbr_conv.0.conv.weight"] = torch.zeros(shape)
        src = tmp_path / "stem.pth"
        torch.save(sd, src)
        assert_refused(run_cli("convert", str(src), dst), dst, "stem kernel")


def test_half_fused_checkpoint(tmp_path, tiny_sd, run_cli):
    from mobileone_cli.fuse.fusion import fuse_state_dict

    fused = fuse_state_dict(tiny_sd, TINY)
    sd = dict(tiny_sd)
    for k in [k for k in sd if k.startswith("stage1.0.")]:
        del sd[k]
    sd.update({k: v for k, v in fused.items() if k.startswith("stage1.0.")})
    src = tmp_path / "half.pth"
    torch.save(sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst), dst, "mixes train-form and deploy-form")


def test_non_tensor_entries_cannot_go_to_safetensors(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["neck.scale"] = 3  # passes through to a .pth; a .safetensors file cannot hold it
    src = tmp_path / "extra.pth"
    torch.save({"state_dict": sd}, src)
    dst = str(tmp_path / "o.safetensors")
    assert_refused(run_cli("convert", str(src), dst), dst, "neck.scale", "not a tensor")
    res = run_cli("convert", str(src), str(tmp_path / "o.pth"))
    assert res.exit_code == 0, res.output


def test_tied_tensors_go_to_safetensors(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["neck.tied"] = sd["linear.weight"]  # same storage: safetensors refuses shared memory
    sd["neck.view"] = sd["linear.weight"][:2]
    src = tmp_path / "tied.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.safetensors"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    from safetensors.torch import load_file

    out = load_file(str(dst))
    assert torch.equal(out["neck.tied"], tiny_sd["linear.weight"])
    assert torch.equal(out["neck.view"], tiny_sd["linear.weight"][:2])


def test_mixed_float_dtypes_are_widened_not_mismatched(tmp_path, tiny_sd, run_cli):
    sd = dict(tiny_sd)
    sd["stage0.rbr_conv.0.conv.weight"] = sd["stage0.rbr_conv.0.conv.weight"].half()
    src = tmp_path / "mixed.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    assert "mixed float dtypes" in " ".join(res.stdout.split())
    assert deploy_matches_train(sd, dst) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_source_is_not_a_false_mismatch(dtype, tmp_path, tiny_sd, run_cli):
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tiny_sd.items()}
    src = tmp_path / "half.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    out = torch.load(dst, weights_only=True)
    assert {v.dtype for v in out.values()} == {dtype}
    # Our own measure: the stored weights are the fp64 fusion rounded once to ``dtype``.
    assert deploy_matches_train(sd, dst) < (2e-2 if dtype == torch.bfloat16 else 4e-3)


def test_verify_agrees_with_convert_on_numeric_edge_cases(tmp_path, tiny_sd, run_cli):
    """Half-precision files verify (fused to float32, not reported as a rounding mismatch);
    a train model that overflows is bad input (2), not a failed verification (1)."""
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tiny_sd.items()}
    src = tmp_path / "half.pth"
    torch.save(half, src)
    res = run_cli("verify", str(src), "--input-size", "32", "--batch", "1")
    assert res.exit_code == 0, res.output
    huge = dict(tiny_sd)
    g = huge["stage2.3.rbr_skip.weight"].clone()
    g[0] = 3e38
    huge["stage2.3.rbr_skip.weight"] = g
    src = tmp_path / "huge.pth"
    torch.save(huge, src)
    for args in (["verify", str(src), "--input-size", "32", "--batch", "1"],
                 ["convert", str(src), str(tmp_path / "o.pth")]):
        assert_refused(run_cli(*args), str(tmp_path / "o.pth"), "NaN/Inf")


@pytest.mark.parametrize("extra", [[], ["--no-fuse"]], ids=["fused", "remapped"])
def test_views_into_one_flat_buffer_are_written_alone(extra, tmp_path, tiny_sd, run_cli):
    """A source whose tensors all view one flat buffer (as some training tools save them):
    torch saves whole storages, so a tensor passed through unchanged would carry the entire
    train buffer into DST (25.8 MB for an 8 MB deploy file).  DST holds only its own numbers:
    every tensor loads with a storage of its own size."""
    flat = torch.cat([v.reshape(-1).float() for v in tiny_sd.values()])
    sd, at = {}, 0
    for k, v in tiny_sd.items():
        sd[k] = flat[at:at + v.numel()].view(v.shape).to(v.dtype) if v.is_floating_point() \
            else v
        at += v.numel()
    src = tmp_path / "flat.pth"
    torch.save(sd, src)
    dst = tmp_path / "o.pth"
    res = run_cli("convert", str(src), str(dst), *extra)
    assert res.exit_code == 0, res.output
    out = torch.load(dst, weights_only=True)
    assert all(v.untyped_storage().nbytes() == v.numel() * v.element_size()
               for v in out.values())  # each tensor saved with a storage of its own
    if not extra:
        assert deploy_matches_train(tiny_sd, dst) < 1e-6
        assert os.path.getsize(dst) < 0.6 * os.path.getsize(src)
