"""`convert --generic` fuses MobileOne-style blocks inside ANY network.

The networks here are our own test-local modules: a configurable multi-branch block written with
plain nn.Conv2d / nn.BatchNorm2d under Apple, timm and mmpretrain names (typed in below, not taken
from the package), stacked FastViT-style with RepMixer-like token mixers (a norm-only block beside
a mixer block), grouped and depthwise convs, 1x1 / 3x3 / 5x5 and non-square (1, 3) kernels, blocks
without a scale branch, SE modules and plain layers that must pass through untouched.  Every
BatchNorm gets random statistics.  The fused file is loaded STRICTLY into a test-local deploy
network with one conv per block, and both networks are run in eval mode on the same input.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from mobileone_cli.errors import BadInput
from mobileone_cli.fuse.generic import find_blocks, parse_kernel
from mobileone_cli.fuse.generic_fuse import fuse_generic

from .nets import NAMES, ConvBN, FastVitLike, _pair, block, randomize

EXPECTED_BLOCKS = {  # path -> (naming, kernel, groups); groups None = not needed, not read
    "stem.0": ("apple", (3, 3), None), "stem.1": ("apple", (3, 3), 16),
    "stem.2": ("apple", (1, 1), 1), "mixer": ("apple", (3, 3), 16),
    "down": ("timm", (5, 5), None),
    "grouped": ("timm", (1, 1), 4), "noscale": ("mmpretrain", (3, 3), 32),
    "biased": ("mmpretrain", (3, 3), 8), "text": ("timm", (1, 3), 32),
    "wide": ("timm", (1, 3), 32),
}


def images(seed=1, size=(2, 3, 32, 32)):
    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


def rel_diff(ref, out):
    return float((ref - out).abs().max() / ref.abs().max())


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and a.contiguous().reshape(-1).view(torch.uint8).tolist()
            == b.contiguous().reshape(-1).view(torch.uint8).tolist())


def run_json(run_cli, *args):
    res = run_cli("convert", "--generic", *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def fastvit():
    return randomize(FastVitLike(), seed=3)


def test_generic_fuses_every_block_and_outputs_match(fastvit, run_cli, tmp_path):
    src, dst = str(tmp_path / "fastvit.pth"), str(tmp_path / "fastvit_fused.pth")
    sd = fastvit.state_dict()
    torch.save(sd, src)
    report = run_json(run_cli, src, dst)
    assert report["fused_blocks"] == len(EXPECTED_BLOCKS)
    got = {b["path"]: (b["naming"], tuple(b["kernel_size"]), b["groups"])
           for b in report["blocks"]}
    assert got == EXPECTED_BLOCKS
    byp = {b["path"]: b for b in report["blocks"]}
    assert byp["mixer"]["nested"] == ["mixer.norm", "mixer.mixer"]
    assert byp["mixer"]["block"] == "RepMixer" and byp["mixer"]["family"] == "FastViT/MobileCLIP"
    assert byp["text"]["block"] == "RepMixer" and byp["text"]["branches"] == "x+s*(mixer-norm)"
    assert byp["grouped"]["groups_from"] == "identity BN"
    assert report["max_rel_diff"] < 1e-6

    fused = torch.load(dst, weights_only=True)
    deploy = FastVitLike(deploy=True)
    deploy.load_state_dict(fused, strict=True)  # one conv per block, nothing missing or extra
    deploy.eval()
    x = images()
    with torch.no_grad():
        ref, out = fastvit(x), deploy(x)
    assert rel_diff(ref, out) < 1e-5, rel_diff(ref, out)
    # Every key that is not a block branch is the very same bytes, in the same order.
    consumed = [k for k in sd if any(f".{r}." in f".{k}" for n in NAMES.values()
                                     for r in (n["conv"], n["scale"], n["skip"]))
                or k in ("mixer.layer_scale", "text.layer_scale.gamma")]
    others = [k for k in sd if k not in consumed]
    assert [k for k in fused if k in sd] == others
    assert report["passthrough_keys"] == len(others)
    for k in others:
        assert same_bytes(fused[k], sd[k]), k
    assert len(fused) == len(others) + 2 * len(EXPECTED_BLOCKS)


def test_generic_check_can_fail(fastvit, tmp_path, monkeypatch, run_cli):
    """A fusion that drops the running mean is caught by the per-block check: exit 1, no DST."""
    import mobileone_cli.fuse.generic_fuse as generic_fuse

    real = generic_fuse.fold_block

    def broken(*args, **kw):
        kernel, bias = real(*args, **kw)
        return kernel, bias + 0.05

    monkeypatch.setattr(generic_fuse, "fold_block", broken)
    src, dst = str(tmp_path / "src.pth"), str(tmp_path / "dst.pth")
    torch.save(fastvit.state_dict(), src)
    res = run_cli("convert", "--generic", src, dst)
    assert res.exit_code == 1, res.output
    assert "differs from its branches" in res.stderr
    assert not os.path.exists(dst)


def test_generic_deploy_outputs_without_the_tool_check(fastvit):
    """The library call alone: fuse_generic's tensors drive a strict deploy network."""
    sd = fastvit.state_dict()
    out, report = fuse_generic(sd)
    assert len(report.blocks) == len(EXPECTED_BLOCKS)
    deploy = FastVitLike(deploy=True)
    deploy.load_state_dict(out, strict=True)
    x = images(seed=5)
    with torch.no_grad():
        assert rel_diff(fastvit(x), deploy.eval()(x)) < 1e-5
    # Passed-through values are the same objects: nothing copied, nothing altered.
    assert out["head.weight"] is sd["head.weight"]
    assert out["grouped.se.reduce.weight"] is sd["grouped.se.reduce.weight"]


class NormOnly(nn.Module):
    def __init__(self, deploy, dim=12, kernel=3, groups=None):
        super().__init__()
        self.norm = block(deploy, "apple", dim, dim, kernel, groups=groups or dim, k=0,
                          scale=False, act=False)

    def forward(self, x):
        return self.norm(x)


@pytest.mark.parametrize("args, kernel, groups", [
    ((), 1, None),  # no sibling: an exact 1x1 depthwise conv
    (("--norm-kernel", "3"), 3, None),
    (("--norm-kernel", "1x5"), (1, 5), None),
    (("--groups", "3"), 1, 3),
    (("--groups", "1", "--norm-kernel", "3"), 3, 1),
])
def test_norm_only_block_kernel_and_groups_hints(args, kernel, groups, run_cli, tmp_path):
    train = randomize(NormOnly(False), seed=11)
    src, dst = str(tmp_path / "n.pth"), str(tmp_path / "n_fused.pth")
    torch.save(train.state_dict(), src)
    report = run_json(run_cli, src, dst, *args)
    assert report["fused_blocks"] == 1
    deploy = NormOnly(True, kernel=kernel, groups=groups)
    deploy.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    x = images(size=(2, 12, 9, 9))
    with torch.no_grad():
        assert rel_diff(train(x), deploy.eval()(x)) < 1e-5


def test_safetensors_wrappers_and_prefixes_keep_keys(fastvit, run_cli, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = fastvit.state_dict()
    src, dst = str(tmp_path / "f.safetensors"), str(tmp_path / "g.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, src)
    run_json(run_cli, src, dst)
    deploy = FastVitLike(deploy=True)
    deploy.load_state_dict(load_file(dst), strict=True)

    # {'state_dict', 'meta'} wrapper and a DDP 'module.' prefix survive the round trip.
    src2, dst2 = str(tmp_path / "w.pth"), str(tmp_path / "w_fused.pth")
    torch.save({"meta": {"epoch": 7}, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               src2)
    run_json(run_cli, src2, dst2)
    obj = torch.load(dst2, weights_only=True)
    assert obj["meta"] == {"epoch": 7}
    assert all(k.startswith("module.") for k in obj["state_dict"])
    deploy.load_state_dict({k[len("module."):]: v for k, v in obj["state_dict"].items()},
                           strict=True)
    x = images()
    with torch.no_grad():
        assert rel_diff(fastvit(x), deploy.eval()(x)) < 1e-5


def test_generic_ema_weights(fastvit, run_cli, tmp_path):
    """--ema fuses the EMA copy: the result drives a deploy net equal to the EMA train net."""
    ema_net = randomize(FastVitLike(), seed=21)
    src, dst = str(tmp_path / "e.pth"), str(tmp_path / "e_fused.pth")
    torch.save({"state_dict": fastvit.state_dict(), "ema_state_dict": ema_net.state_dict()}, src)
    run_json(run_cli, src, dst, "--ema")
    deploy = FastVitLike(deploy=True)
    deploy.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    x = images(seed=8)
    with torch.no_grad():
        assert rel_diff(ema_net(x), deploy.eval()(x)) < 1e-5
        assert rel_diff(fastvit(x), deploy(x)) > 1e-2  # and not the other weights
    res = run_cli("convert", "--generic", src, str(tmp_path / "x.pth"), "--prefix", "a.")
    assert res.exit_code == 2 and "do not apply with --generic" in res.stderr


def test_generic_on_a_mobileone_matches_the_mobileone_converter(run_cli, tmp_path):
    """A MobileOne is a network of MobileOne blocks: both routes give the same tensors."""
    from mobileone_cli.io.configfile import load_config
    from mobileone_cli.fuse.fusion import fuse_state_dict
    from mobileone_cli.models.synthetic import random_state_dict

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    arch = load_config(os.path.join(here, "examples", "custom_3stage.yaml"))
    for layout in ("apple", "timm", "mmpretrain"):
        sd = random_state_dict(arch, layout=layout, seed=4)
        out, report = fuse_generic(sd)
        ref = fuse_state_dict(dict(sd), arch, layout=layout)
        assert len(report.blocks) == len(arch.block_specs())
        assert list(out) == list(ref)
        for k in ref:
            assert torch.allclose(out[k].double(), ref[k].double(), rtol=0, atol=1e-6), k


# ---------------------------------------------------------------- refusals (exit 2, no DST)

def _bare(naming="apple", c=8, cpg=1, k=3, branches=1, scale=True, identity=True,
          bn_size=None, prefix="blk."):
    """A state dict of one block, written key by key (shapes are what matters here)."""
    n = NAMES[naming]
    sd = {}

    def bn(p, size):
        sd.update({f"{p}.weight": torch.rand(size) + 0.5, f"{p}.bias": torch.rand(size),
                   f"{p}.running_mean": torch.rand(size), f"{p}.running_var": torch.rand(size) + .5,
                   f"{p}.num_batches_tracked": torch.tensor(3)})

    if identity:
        bn(f"{prefix}{n['skip']}", c)
    for i in range(branches):
        sd[f"{prefix}{n['conv']}.{i}.conv.weight"] = torch.randn(c, cpg, *_pair(k))
        bn(f"{prefix}{n['conv']}.{i}.{n['bn']}", bn_size or c)
    if scale:
        sd[f"{prefix}{n['scale']}.conv.weight"] = torch.randn(c, cpg, 1, 1)
        bn(f"{prefix}{n['scale']}.{n['bn']}", c)
    return sd


def _refused(sd, match, **kw):
    with pytest.raises(BadInput, match=match):
        fuse_generic(sd, **kw)


def test_bare_block_at_top_level_is_found():
    sd = _bare(prefix="")
    out, report = fuse_generic(sd)
    assert [b.path for b in report.blocks] == [""]
    assert list(out) == ["reparam_conv.weight", "reparam_conv.bias"]
    assert report.blocks[0].groups == 8  # identity BN of 8 channels / weight.shape[1] == 1


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.update({"blk.rbr_conv.0.bn.running_var": torch.rand(5) + 1}),
     "disagree in size"),
    (lambda sd: sd.update({"blk.rbr_conv.1.conv.weight": torch.randn(8, 1, 5, 5)}),
     "differs from branch 0"),
    (lambda sd: sd.update({"blk.rbr_scale.conv.weight": torch.randn(8, 2, 1, 1)}),
     "does not fit the conv branches"),
    (lambda sd: sd.update({"blk.rbr_scale.conv.weight": torch.randn(8, 1, 3, 3)}),
     "scale branch is a 1x1 conv"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("blk.rbr_conv.0.")],
     "numbered \\[1\\]"),
    (lambda sd: sd.pop("blk.rbr_conv.1.bn.running_var"), "without running_var"),
    (lambda sd: sd.update({"blk.reparam_conv.weight": torch.randn(8, 1, 3, 3)}), "half-fused"),
    (lambda sd: sd.update({"blk.conv_scale.conv.weight": torch.randn(8, 1, 1, 1)}),
     "mixes key namings"),
    (lambda sd: sd.update({"blk.rbr_conv.0.act.weight": torch.randn(8)}),
     "unrecognised key 'blk.rbr_conv.0.act.weight'"),
    (lambda sd: sd.update({"blk.rbr_conv.0.conv.weight": torch.randn(8, 1, 3)}),
     "expected a 4-d conv kernel"),
])
def test_inconsistent_blocks_are_refused(edit, match):
    sd = _bare(branches=2)
    edit(sd)
    _refused(sd, match)


def test_identity_shapes_that_do_not_fit_are_refused():
    _refused(_bare(c=8, cpg=3), "cannot be split into groups of 3")
    sd = _bare(c=8, identity=False)
    sd.update({f"blk.rbr_skip.{leaf}": torch.rand(6) + .5
               for leaf in ("weight", "bias", "running_mean", "running_var")})
    _refused(sd, "identity BatchNorm has 6 channels but the block has 8 outputs")
    _refused(_bare(k=(2, 2)), "even side")
    _refused(_bare(k=(1, 4), identity=False), "even side")


def test_even_kernel_without_centred_branches_is_fine():
    out, report = fuse_generic(_bare(k=(2, 2), scale=False, identity=False))
    assert report.blocks[0].kernel_size == (2, 2)


def test_ambiguous_norm_only_block_is_refused_and_hint_resolves_it():
    sd = _bare(prefix="p.a.", k=3, scale=False, identity=False)
    sd.update(_bare(prefix="p.b.", k=5, scale=False, identity=False))
    sd.update({k.replace("p.a.", "p.norm."): v for k, v in _bare(prefix="p.a.", branches=0,
                                                                 scale=False).items()})
    _refused(sd, "sibling blocks disagree")
    _, report = fuse_generic(sd, norm_kernel=(3, 3))
    assert {b.path: b.kernel_size for b in report.blocks}["p.norm"] == (3, 3)
    _refused(_bare(branches=0, scale=False), "--groups 3 does not divide", groups=3)


def test_repvgg_like_and_lookalike_modules():
    # timm RepVGG keeps ONE conv_kxk (no index): a RepVggBlock, whose branch needs its BN.
    sd = _bare("timm", branches=0, scale=False)
    sd["blk.conv_kxk.conv.weight"] = torch.randn(8, 1, 3, 3)
    _refused(sd, "conv_kxk: needs both a conv and a BatchNorm")
    # A Linear that happens to be called 'identity' is no BatchNorm: passed through.
    sd = _bare("timm")
    sd["proj.identity.weight"] = torch.randn(4, 4)
    sd["proj.identity.bias"] = torch.randn(4)
    out, report = fuse_generic(sd)
    assert [b.path for b in report.blocks] == ["blk"]
    assert out["proj.identity.weight"] is sd["proj.identity.weight"]


def test_cli_refusals_write_nothing(run_cli, tmp_path):
    src, dst = str(tmp_path / "s.pth"), str(tmp_path / "d.pth")
    torch.save({"fc.weight": torch.randn(3, 3), "bn.running_var": torch.rand(3)}, src)
    res = run_cli("convert", "--generic", src, dst)
    assert res.exit_code == 2 and "no re-parameterisable blocks found" in res.stderr
    bad = _bare(c=8, cpg=3)
    torch.save(bad, src)
    res = run_cli("convert", "--generic", src, dst)
    assert res.exit_code == 2 and "cannot be split into groups" in res.stderr
    assert "Traceback" not in res.output
    torch.save(_bare(), src)
    for extra, msg in ((("--to", "timm"), "--to does not apply"),
                       (("--arch", "s0"), "--arch does not apply"),
                       (("--dtype", "fp16"), "--dtype does not apply"),
                       (("--norm-kernel", "2"), "must be odd"),
                       (("--norm-kernel", "3x"), "expected K or HxW")):
        res = run_cli("convert", "--generic", src, dst, *extra)
        assert res.exit_code == 2 and msg in res.stderr, res.output
    res = run_cli("convert", src, dst, "--groups", "2")
    assert res.exit_code == 2 and "only apply with --generic" in res.stderr
    assert not os.path.exists(dst)
    open(dst, "wb").write(b"keep me")
    res = run_cli("convert", "--generic", src, dst)
    assert res.exit_code == 2 and open(dst, "rb").read() == b"keep me"
    assert run_cli("convert", "--generic", src, dst, "--force").exit_code == 0


def test_plain_output_names_every_fused_block(run_cli, tmp_path):
    src, dst = str(tmp_path / "s.pth"), str(tmp_path / "d.pth")
    sd = _bare(prefix="enc.a.")
    sd.update(_bare(prefix="enc.norm.", branches=0, scale=False))
    torch.save(sd, src)
    res = run_cli("convert", "--generic", src, dst)
    assert res.exit_code == 0, res.output
    assert "enc.a" in res.stdout and "enc.norm" in res.stdout
    assert "kernel 3x3 from sibling enc.a" in res.stdout and "fused blocks" in res.stdout


def test_parse_kernel():
    assert parse_kernel("3") == (3, 3) and parse_kernel("1x11") == (1, 11)
    assert parse_kernel("1,5") == (1, 5) and parse_kernel(None) is None


def test_find_blocks_needs_no_torch():
    code = ("import sys; from mobileone_cli.fuse.generic import find_blocks; "
            "info = {'a.rbr_conv.0.conv.weight': ('float32', (4, 1, 1, 7)), "
            "**{f'a.rbr_conv.0.bn.{l}': ('float32', (4,)) for l in "
            "('weight', 'bias', 'running_mean', 'running_var')}}; "
            "b, _ = find_blocks(info); assert b[0].kernel_size == (1, 7), b; "
            "assert 'torch' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
    # and the same description through the torch-free entry point directly
    blocks, already = find_blocks({"x.reparam_conv.weight": ("float32", (4, 4, 3, 3)),
                                   "x.reparam_conv.bias": ("float32", (4,)),
                                   **{k: ("float32", tuple(v.shape)) for k, v in
                                      _bare(naming="mmpretrain").items()}})
    assert [b.path for b in blocks] == ["blk"] and already == ["x"]


class MMRepVGGBlock(nn.Module):
    """mmpretrain's RepVGGBlock names (read from mmpretrain/models/backbones/repvgg.py; mmpretrain
    needs mmcv, which does not install here): branch_3x3/branch_1x1 (conv, norm), branch_norm,
    deploy conv branch_reparam."""

    def __init__(self, deploy, c=8, groups=2):
        super().__init__()
        self.deploy = deploy
        if deploy:
            self.branch_reparam = nn.Conv2d(c, c, 3, 1, 1, groups=groups)
            return
        self.branch_norm = nn.BatchNorm2d(c)
        self.branch_3x3 = ConvBN(c, c, 3, 1, groups, "norm")
        self.branch_1x1 = ConvBN(c, c, 1, 1, groups, "norm")

    def forward(self, x):
        if self.deploy:
            return self.branch_reparam(x)
        return self.branch_3x3(x) + self.branch_1x1(x) + self.branch_norm(x)


def test_mmpretrain_repvgg_naming():
    train = randomize(nn.Sequential(MMRepVGGBlock(False), MMRepVGGBlock(False)), seed=4)
    out, report = fuse_generic(train.state_dict())
    assert [(b.block_type, b.naming, b.groups) for b in report.blocks] == [
        ("RepVGGBlock", "mmpretrain", 2)] * 2
    deploy = nn.Sequential(MMRepVGGBlock(True), MMRepVGGBlock(True))
    deploy.load_state_dict(out, strict=True)
    x = images(size=(2, 8, 9, 9))
    with torch.no_grad():
        assert rel_diff(train(x), deploy.eval()(x)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_block_bound_is_verify_rule_and_covers_storage_rounding(dtype):
    """The default per-block bound is DEFAULT_RTOL + SENSITIVITY_FACTOR x the measured effect of
    one unit roundoff of the stored dtype: the block stored in ``dtype`` passes it; the same
    block with its fused bias moved by 1% of the output's scale (10 unit roundoffs for
    bfloat16) does not."""
    from mobileone_cli.fuse.generic_fuse import block_bounds, check_blocks
    from mobileone_cli.rules.tolerances import DEFAULT_RTOL, SENSITIVITY_FACTOR

    sd = {k: v.to(dtype) if v.is_floating_point() else v
          for k, v in _bare(c=16, branches=2).items()}
    out, report = fuse_generic(sd)
    bounds = block_bounds(out, report.blocks)
    checks = check_blocks(sd, out, report.blocks)
    assert checks["blk"] <= bounds["blk"]
    assert bounds["blk"] >= DEFAULT_RTOL
    # The sensitivity term is about one unit roundoff of the dtype, relative: recomputed here
    # from the dtype's machine epsilon (2 unit roundoffs) with a generous band.
    unit = torch.finfo(dtype).eps / 2
    term = (bounds["blk"] - DEFAULT_RTOL) / SENSITIVITY_FACTOR
    assert unit / 100 < term < 2 * unit
    shifted = dict(out)
    scale = max(float(out["blk.reparam_conv.weight"].double().abs().sum((1, 2, 3)).max()), 1.0)
    shifted["blk.reparam_conv.bias"] = (out["blk.reparam_conv.bias"].double()
                                        + max(0.01, 10 * unit) * scale).to(dtype)
    assert check_blocks(sd, shifted, report.blocks)["blk"] > bounds["blk"]
    assert block_bounds(out, report.blocks, rtol=0.5) == {"blk": 0.5}
