"""The block-by-block comparison under the verdict (check.localize.lockstep): it runs the models'
own function, its block errors are what running each block by hand gives, its cosines are float64
cosines, and the perturbed model is the perturbed state dict's."""
from __future__ import annotations

import pytest
import torch

from mobileone_cli.check.harness import load_model, perturb, perturb_module, seeded_inputs
from mobileone_cli.check.localize import HEAD, compared_modules, cosines, lockstep
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.specs import get_arch

from .conftest import fold_by_hand

ARCH = get_arch("s1")


@pytest.fixture(scope="module")
def pair():
    sd = random_state_dict(ARCH, seed=21, stats="calibrated")
    deploy = {k: v.float() for k, v in fold_by_hand(sd, ARCH).items()}
    return sd, deploy


def _by_hand(model, x):
    """Every block's output, run through the model's own forward with hooks."""
    outs = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o))
               for n, _, m in compared_modules(model)]
    with torch.no_grad():
        y = model(x)
    for h in handles:
        h.remove()
    return y, outs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lockstep_runs_the_models_own_function_and_measures_each_block(pair, dtype):
    sd, deploy = pair
    t, d = load_model(sd, ARCH, "train"), load_model(deploy, ARCH, "deploy")
    x = seeded_inputs(3, 2, (64, 64)).to(dtype)
    errors = {"deploy": {}, "perturbed": {}}
    t_out, d_out, p_out = lockstep(t, d, x, errors)
    t_ref = load_model(sd, ARCH, "train", dtype=dtype)
    d_ref = load_model(deploy, ARCH, "deploy", dtype=dtype)
    y_t, blocks_t = _by_hand(t_ref, x)
    y_d, blocks_d = _by_hand(d_ref, x)
    assert p_out is None and t_out.dtype == dtype
    assert torch.equal(t_out, y_t) and torch.equal(d_out, y_d)  # the same arithmetic
    ins = {}  # each block's train input
    prev = x
    for name, _, _ in compared_modules(t_ref):
        ins[name] = torch.flatten(t_ref.gap(prev), 1) if name == HEAD else prev
        prev = blocks_t[name]
    mods = {n: m for n, _, m in compared_modules(d_ref)}
    assert list(errors["deploy"]) == list(blocks_t)
    for name, err in errors["deploy"].items():
        ref = blocks_t[name].double()
        with torch.no_grad():
            own = mods[name](ins[name]).double()
        assert err.max_abs == pytest.approx(float((ref - blocks_d[name].double()).abs().max()),
                                            rel=1e-6, abs=1e-30)
        assert err.own_abs == pytest.approx(float((ref - own).abs().max()), rel=1e-6,
                                            abs=1e-30)
        assert err.scale == float(ref.abs().max())
        cos = torch.nn.functional.cosine_similarity(ref.flatten(1),
                                                    blocks_d[name].double().flatten(1))
        assert err.cosine == pytest.approx(float(cos.min()), abs=1e-12)


def test_perturbed_model_is_the_perturbed_state_dict(pair):
    _, deploy = pair
    unit = 2.0 ** -11
    half = {k: v.half() for k, v in deploy.items()}
    moved = perturb(half, unit)
    model = load_model(half, ARCH, "deploy", dtype=torch.float32)
    for name, _, mod in compared_modules(model):
        copy_ = perturb_module(mod, name, unit)
        for key, v in copy_.state_dict().items():
            assert torch.equal(v, moved[f"{name}.{key}"].float()), f"{name}.{key}"
            changed = (v != mod.state_dict()[key]).float().mean()
            assert 0.99 < changed <= 1, f"{name}.{key}"  # every weight moved, none lost
    signs = torch.sign(moved["stage0.reparam_conv.weight"] - half[
        "stage0.reparam_conv.weight"].double())
    assert abs(float(signs.mean())) < 0.1  # a fair coin
    for key, w in half.items():  # the definition: w * (1 +- unit), exact in float64
        w64 = w.double()
        assert torch.equal((moved[key] - w64).abs(), w64.abs() * unit), key
    # the model's own tensors are untouched
    assert all(torch.equal(v.float(), half[k].float()) for k, v in model.state_dict().items())


def test_lockstep_perturbed_stream_is_the_perturbed_model(pair):
    sd, deploy = pair
    unit = 2.0 ** -24
    t, d = load_model(sd, ARCH, "train"), load_model(deploy, ARCH, "deploy")
    x = seeded_inputs(4, 1, (64, 64))
    _, d_out, p_out = lockstep(t, d, x, {"deploy": {}, "perturbed": {}}, unit=unit)
    with torch.no_grad():
        p_ref = load_model(perturb(deploy, unit), ARCH, "deploy", dtype=torch.float32)(x)
    assert torch.equal(p_out, p_ref)


@pytest.mark.parametrize("size", [1e-7, 1e-3, 0.5, 3.0])
def test_cosines_match_float64_cosine_similarity(size):
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(3, 4000, generator=g)
    other = ref + size * torch.randn(3, 4000, generator=g)
    want = torch.nn.functional.cosine_similarity(ref.double(), other.double())
    got = cosines(ref, ref - other)
    assert torch.allclose(got, want, rtol=0, atol=1e-8)
    assert float(cosines(ref, 2 * ref).max()) == pytest.approx(-1.0, abs=1e-12)  # other = -ref
    assert float(cosines(torch.zeros(1, 8), torch.zeros(1, 8))) == 1.0  # both zero: identical
