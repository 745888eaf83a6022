"""Cross-layer equalization (``convert --equalize``) and data-free bias correction
(``quant --equalize``).

The equalized file is judged by the usual verdict and, independently, run in float64 against
the train model; the scales are recomputed here by a numpy implementation of the paper's rule
that shares nothing with mobileone_cli.fuse.equalize; the expected activations against forward
passes and a numerical integration of the normal density; the bias shift against F.conv2d on
a constant image.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobileone_cli.arch.specs import ArchSpec, get_arch
from mobileone_cli.check.harness import load_model, seeded_inputs
from mobileone_cli.fuse.equalize import (SE_REASON, equalize_state_dict,
                                         equalize_train_state_dict)
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.io.read import load_checkpoint
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.quant.biascorrect import bias_shift, expected_inputs, relu_mean

from .conftest import invoke

TINY = ArchSpec(name="tiny", stem_channels=8, widths=(8, 16, 24), blocks=(1, 2, 1),
                conv_branches=(2, 2, 2), se_blocks=(0, 0, 0), num_classes=10)
TINY_SE = ArchSpec(name="tiny_se", stem_channels=8, widths=(8, 16, 24), blocks=(1, 2, 1),
                   conv_branches=(2, 2, 2), se_blocks=(0, 1, 1), num_classes=10, se_ratio=0.25)
SIZE = 32


def _train(arch, stats="calibrated", seed=0):
    return random_state_dict(arch, stats=stats, seed=seed)


def _fused64(sd, arch):
    return fuse_state_dict(sd, arch, dtype=torch.float64)


def _forward64(sd, arch, form, x):
    with torch.no_grad():
        return load_model(sd, arch, form, dtype=torch.float64)(x.double())


# ---------------------------------------------------------------- the scales, independently

def reference_equalize(deploy_sd, arch, sweeps):
    """The paper's rule in numpy: for each pair without SE on its first layer, in forward order,
    s = sqrt(max|W1[i]| / max|W2[:, i]|), W1[i] /= s, b1[i] /= s, W2[:, i] *= s; ``sweeps``
    times over the chain.  Returns the weights and the product of each pair's scales."""
    w = {k: v.detach().double().numpy().copy() for k, v in deploy_sd.items()}
    specs = list(arch.block_specs())
    chain = [(a, b) for a, b in zip(specs, specs[1:] + [None]) if not a.has_se]
    total = {a.name: np.ones(a.out_channels) for a, _ in chain}
    for _ in range(sweeps):
        for a, b in chain:
            w1 = w[f"{a.name}.reparam_conv.weight"]
            w2 = w["linear.weight" if b is None else f"{b.name}.reparam_conv.weight"]
            r1 = np.abs(w1).max(axis=(1, 2, 3))
            if b is None:
                r2 = np.abs(w2).max(axis=0)
            elif b.groups == 1:
                r2 = np.abs(w2).max(axis=(0, 2, 3))
            else:  # depthwise: input channel i is filter i
                r2 = np.abs(w2).max(axis=(1, 2, 3))
            s = np.sqrt(r1 / r2)
            w1 /= s[:, None, None, None]
            w[f"{a.name}.reparam_conv.bias"] /= s
            if b is None:
                w2 *= s[None, :]
            elif b.groups == 1:
                w2 *= s[None, :, None, None]
            else:
                w2 *= s[:, None, None, None]
            total[a.name] *= s
    return w, total


@pytest.mark.parametrize("arch", [TINY, TINY_SE], ids=["plain", "se"])
def test_scales_match_an_independent_float64_computation(arch):
    dep = _fused64(_train(arch), arch)
    out, eq = equalize_state_dict(dep, arch)
    assert eq.converged and eq.sweeps > 1
    want, total = reference_equalize(dep, arch, eq.sweeps)
    for k, v in out.items():
        np.testing.assert_allclose(v.numpy(), want[k], rtol=1e-12, atol=1e-300, err_msg=k)
    assert {p.producer for p in eq.equalized} == set(total)
    for p in eq.equalized:
        np.testing.assert_allclose(p.scales.numpy(), total[p.producer], rtol=1e-12)
    # one sweep: the paper's single-pair rule on the fused weights themselves
    _, one = equalize_state_dict(dep, arch, max_sweeps=1)
    w1, w2 = dep["stage0.reparam_conv.weight"], dep["stage1.0.reparam_conv.weight"]
    r1, r2 = w1.abs().amax(dim=(1, 2, 3)), w2.abs().amax(dim=(1, 2, 3))  # stem -> depthwise
    assert torch.allclose(one.pairs[0].scales, torch.sqrt(r1 / r2), rtol=1e-15, atol=0)


def test_converged_pairs_have_equal_ranges():
    dep = _fused64(_train(TINY, "random", seed=3), TINY)
    out, eq = equalize_state_dict(dep, TINY)
    specs = {b.name: b for b in TINY.block_specs()}
    worst = 0.0
    for p in eq.equalized:
        r1 = out[f"{p.producer}.reparam_conv.weight"].abs().amax(dim=(1, 2, 3))
        if p.consumer == "linear":
            r2 = out["linear.weight"].abs().amax(dim=0)
        elif specs[p.consumer].groups == 1:
            r2 = out[f"{p.consumer}.reparam_conv.weight"].abs().amax(dim=(0, 2, 3))
        else:
            r2 = out[f"{p.consumer}.reparam_conv.weight"].abs().amax(dim=(1, 2, 3))
        worst = max(worst, float(torch.log(r1 / r2).abs().max()))
    assert worst < 0.1, worst  # within 10% where the unequalized ranges differ by up to 5x
    before = max(p.spread_before for p in eq.equalized)
    assert max(p.spread_after for p in eq.equalized) < before


def test_pairs_after_se_blocks_are_skipped_and_must_be():
    dep = _fused64(_train(TINY_SE), TINY_SE)
    _, eq = equalize_state_dict(dep, TINY_SE)
    se = {b.name for b in TINY_SE.block_specs() if b.has_se}
    assert {p.producer for p in eq.skipped} == se
    assert all(p.reason == SE_REASON for p in eq.skipped)
    # the skip is needed: scaling across an SE block changes the function
    a = next(b for b in TINY_SE.block_specs() if b.has_se)
    forced = dict(dep)
    s = torch.linspace(0.5, 2.0, a.out_channels, dtype=torch.float64)
    forced[f"{a.name}.reparam_conv.weight"] = dep[f"{a.name}.reparam_conv.weight"] / s.view(
        -1, 1, 1, 1)
    forced[f"{a.name}.reparam_conv.bias"] = dep[f"{a.name}.reparam_conv.bias"] / s
    nxt = list(TINY_SE.block_specs())[[b.name for b in TINY_SE.block_specs()].index(a.name) + 1]
    key = f"{nxt.name}.reparam_conv.weight"
    forced[key] = dep[key] * (s.view(1, -1, 1, 1) if nxt.groups == 1 else s.view(-1, 1, 1, 1))
    x = seeded_inputs(0, 2, (SIZE, SIZE))
    ref, bad = _forward64(dep, TINY_SE, "deploy", x), _forward64(forced, TINY_SE, "deploy", x)
    assert float((ref - bad).abs().max() / ref.abs().max()) > 1e-3


@pytest.mark.parametrize("stats", ["calibrated", "random"])
@pytest.mark.parametrize("arch", [TINY, TINY_SE], ids=["plain", "se"])
def test_equalized_network_computes_the_train_function(arch, stats):
    train = _train(arch, stats, seed=1)
    out, eq = equalize_state_dict(_fused64(train, arch), arch)
    x = seeded_inputs(5, 2, (SIZE, SIZE))
    ref = _forward64(train, arch, "train", x)
    got = _forward64(out, arch, "deploy", x)
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-9
    # the train form reparameterized alike fuses to the equalized deploy form
    refused = fuse_state_dict(equalize_train_state_dict(train, arch, eq), arch,
                              dtype=torch.float64)
    for k, v in out.items():
        assert torch.allclose(refused[k], v, rtol=1e-10, atol=1e-12 * float(v.abs().max())), k


@pytest.mark.parametrize("stats", ["calibrated", "random"])
def test_convert_equalize_passes_the_verdict(tmp_path, stats):
    src, dst = str(tmp_path / "train.pth"), str(tmp_path / "deploy_eq.safetensors")
    train = _train(TINY_SE, stats, seed=2)
    save_checkpoint(src, {k: v.clone() for k, v in train.items()}, force=True)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps({"name": "tiny_se", "model": {"backbone": {"type": "MobileOne",
        "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SE.to_dict().items()
                 if k not in ("name", "num_classes", "bn_eps")}},
        "head": {"num_classes": 10, "in_channels": 24}}}))
    res = invoke("convert", src, dst, "--config", str(cfg), "--equalize", "--input-size", "32",
                 "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["check"]["passed"] is True
    e = d["equalization"]
    assert e["skipped"] == 4 and e["equalized"] == 5
    # independently of the verdict: the written file in float64 against the train model
    out = load_checkpoint(dst).state_dict
    assert all(v.dtype == torch.float32 for v in out.values())
    x = seeded_inputs(9, 2, (SIZE, SIZE))
    ref, got = _forward64(train, TINY_SE, "train", x), _forward64(out, TINY_SE, "deploy", x)
    bound = 1e-4 if stats == "calibrated" else 1e-1  # fp32 weights of an ill-conditioned net
    assert float((ref - got).abs().max() / ref.abs().max()) < bound
    plain = _fused64(train, TINY_SE)
    assert not torch.equal(out["stage1.0.reparam_conv.weight"],
                           plain["stage1.0.reparam_conv.weight"].float())


def test_convert_equalize_refuses_a_deploy_checkpoint(tmp_path):
    src = str(tmp_path / "deploy.pth")
    save_checkpoint(src, random_state_dict(get_arch("s0"), form="deploy", stats="random"),
                    force=True)
    res = invoke("convert", src, str(tmp_path / "x.pth"), "--equalize")
    assert res.exit_code == 2 and "train" in res.output


# ---------------------------------------------------------------- bias correction

def relu_mean_numeric(m, s):
    """E[max(0, y)], y ~ N(m, s^2), per element, by the trapezoid rule over y in [0, m + 12 s]
    (numpy; s = 0: max(0, m))."""
    m, s = np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64)
    safe = np.where(s > 0, s, 1.0)
    hi = np.maximum(m + 12 * safe, 12 * safe)
    t = np.linspace(0.0, 1.0, 20001)
    y = hi[..., None] * t
    dens = np.exp(-0.5 * ((y - m[..., None]) / safe[..., None]) ** 2) / (
        safe[..., None] * np.sqrt(2 * np.pi))
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2: trapz
    val = trapezoid(y * dens, y, axis=-1)
    return np.where(s > 0, val, np.maximum(m, 0.0))


def test_relu_mean_is_the_clipped_normal_mean():
    m = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0, 1.0], dtype=torch.float64)
    s = torch.tensor([1.0, 2.0, 0.3, 1.5, 0.5, 0.0], dtype=torch.float64)
    want = relu_mean_numeric(m.numpy(), s.numpy())
    np.testing.assert_allclose(relu_mean(m, s).numpy(), want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 8])
def test_bias_shift_is_the_conv_of_the_rounding_error_on_the_mean(groups):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 8 // groups, 3, 3, generator=g, dtype=torch.float64)
    wq = w + 0.01 * torch.randn(w.shape, generator=g, dtype=torch.float64)
    mean = torch.rand(8, generator=g, dtype=torch.float64)
    x = mean.view(1, 8, 1, 1).expand(1, 8, 7, 7)
    conv = F.conv2d(x, wq - w, None, 1, 1, groups=groups)
    assert torch.allclose(bias_shift(w, wq, mean, groups), conv[0, :, 3, 3], rtol=1e-12)


@torch.no_grad()
def test_expected_inputs_follow_the_measured_activations():
    """The BatchNorm estimate against the mean activations the calibrated network produces on
    the kind of images its statistics were measured on (early blocks: the estimate is only as
    good as the statistics, which later blocks of a 4-batch calibration measure loosely)."""
    train = _train(TINY)
    model = MobileOne(TINY)
    model.load_state_dict(train)
    model.eval()
    seen = {}
    for name, mod in model.named_modules():
        if name in ("stage1.0", "stage1.1", "stage2.0"):
            mod.register_forward_pre_hook(
                lambda m, a, n=name: seen.__setitem__(n, a[0].double().mean((0, 2, 3))))
    model(torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    est = expected_inputs(train, TINY)
    for name, got in seen.items():
        rel = float((est[name] - got).abs().mean() / got.abs().mean())
        assert rel < 0.4, (name, rel)
        assert float(torch.corrcoef(torch.stack([est[name], got]))[0, 1]) > 0.6, name
