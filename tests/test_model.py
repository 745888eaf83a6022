"""Our MobileOne module: the train form against a functional forward written here, eps as a
parameter, switching to deploy in place, headless networks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.models.mobileone import MobileOne, build_model, deploy_copy
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.specs import get_arch

from .conftest import FOUR_STAGE


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


@pytest.mark.slow  # torch.jit.trace with its own check, and a training step
def test_switch_to_deploy_in_place_scriptable_and_trainable():
    spec = FOUR_STAGE  # four stages with SE blocks, as s4, in fewer and narrower blocks
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
