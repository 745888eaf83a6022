"""The fusion: fuse_branches against a functional float64 forward for odd shapes the built-ins
never use, and whole networks exact in float64, rounded once."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobileone_cli.errors import BadInput
from mobileone_cli.fuse import fusion
from mobileone_cli.fuse.fusion import BatchNormStats, fuse_branches, fuse_state_dict
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.specs import get_arch

from .conftest import ARCHS


def _bn(c, g):
    u = lambda lo, hi: torch.rand(c, generator=g, dtype=torch.float64) * (hi - lo) + lo  # noqa
    return BatchNormStats(running_mean=u(-1, 1), running_var=u(0.5, 2), weight=u(0.5, 1.5),
                          bias=u(-0.5, 0.5))


def _apply_bn(y, bn, eps):
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, eps)


@pytest.mark.parametrize("cin,cout,groups,ks,k,scale,ident,chunk", [
    (8, 8, 8, (3, 3), 3, True, True, 5),  # depthwise, chunks that do not divide the channels
    (6, 6, 2, (3, 3), 1, True, True, 7),  # grouped, identity kernel across groups
    (4, 10, 1, (1, 1), 2, False, False, 1 << 18),  # pointwise, no identity
    (5, 5, 1, (1, 3), 1, True, True, 3),  # non-square kernel (MobileCLIP style)
    (7, 7, 7, (3, 3), 0, True, True, 4),  # no conv branch at all
])
def test_fuse_branches_matches_functional_forward(monkeypatch, cin, cout, groups, ks, k, scale,
                                                  ident, chunk):
    monkeypatch.setattr(fusion, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(cin * 100 + cout)
    eps = 1e-3
    convs = [(torch.randn(cout, cin // groups, *ks, generator=g, dtype=torch.float64), _bn(cout, g))
             for _ in range(k)]
    sc = (torch.randn(cout, cin // groups, 1, 1, generator=g, dtype=torch.float64), _bn(cout, g)) \
        if scale else None
    idn = _bn(cin, g) if ident else None
    x = torch.randn(2, cin, 9, 11, generator=g, dtype=torch.float64)
    pad = (ks[0] // 2, ks[1] // 2)
    ref = torch.zeros(2, cout, 9, 11, dtype=torch.float64)
    for w, bn in convs:
        ref += _apply_bn(F.conv2d(x, w, None, 1, pad, 1, groups), bn, eps)
    if sc:
        ref += _apply_bn(F.conv2d(x, sc[0], None, 1, 0, 1, groups), sc[1], eps)
    if idn:
        ref += _apply_bn(x, idn, eps)
    kernel, bias = fuse_branches(convs, sc, idn, kernel_size=ks, groups=groups, in_channels=cin,
                                 eps=eps)
    assert kernel.dtype == torch.float64 and kernel.shape == (cout, cin // groups, *ks)
    got = F.conv2d(x, kernel, bias, 1, pad, 1, groups)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-13


def test_fuse_branches_rounds_once_to_the_requested_dtype():
    g = torch.Generator().manual_seed(0)
    convs = [(torch.randn(16, 1, 3, 3, generator=g), _bn(16, g))]
    k64, b64 = fuse_branches(convs, None, _bn(16, g), kernel_size=3, groups=16, in_channels=16)
    g = torch.Generator().manual_seed(0)
    convs = [(torch.randn(16, 1, 3, 3, generator=g), _bn(16, g))]
    k16, b16 = fuse_branches(convs, None, _bn(16, g), kernel_size=3, groups=16, in_channels=16,
                             dtype=torch.float16)
    assert k16.dtype == torch.float16 and torch.equal(k16, k64.half())
    assert torch.equal(b16, b64.half())


def test_inputs_are_not_modified():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 4, 3, 3, generator=g, dtype=torch.float64)
    before = w.clone()
    fuse_branches([(w, _bn(4, g))], None, _bn(4, g), kernel_size=3, groups=1, in_channels=4)
    assert torch.equal(w, before)


@pytest.mark.parametrize("var,eps", [(-0.1, 1e-5), (0.0, 0.0)])
def test_singular_or_negative_variance_is_refused(var, eps):
    bn = BatchNormStats(torch.zeros(2), torch.tensor([1.0, var]), torch.ones(2), torch.zeros(2))
    with pytest.raises(BadInput, match="conv branch 0"):
        fuse_branches([(torch.ones(2, 1, 3, 3), bn)], None, None, kernel_size=3, groups=2,
                      in_channels=2, eps=eps, where="stage1.0")


@pytest.mark.parametrize("arch", ARCHS)
def test_fp64_fusion_is_exact(arch):
    spec = get_arch(arch)
    sd = random_state_dict(spec, seed=11, dtype=torch.float64)
    fused = fuse_state_dict(sd, spec)
    assert all(v.dtype == torch.float64 for v in fused.values())
    with torch.device("meta"):  # no random init: every tensor is assigned below
        train, deploy = MobileOne(spec).eval(), MobileOne(spec, deploy=True).eval()
    train.load_state_dict(sd, strict=True, assign=True)
    deploy.load_state_dict(fused, strict=True, assign=True)
    # 64 px: the last stage still sees 2x2 pixels, so every border and padding is exercised
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
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
