"""``convert --generic`` on networks of the whole MobileOne family, written by the families' own
code (tests/fixtures/make_family_fixtures.py: timm's FastVit (SA, MCi0 and MCi3 forms), RepVGG,
RepGhostNet and MobileOne, Apple's ml-fastvit FastViT and ml-mobileclip MCi0, RepVGG's original
repository).

For each: the converted file holds exactly the keys and shapes of the family's own deploy
network (its ``reparameterize_model``), loads strictly into that network (exported by the
family's code with ``torch.export``, so it runs without timm here) and computes the float64 train
network's logits within the verdict's bound: atol + rtol * max|ref| + SENSITIVITY_FACTOR * (the
error of the family's own float32 deploy route on the same input), on the calibrated network and
on an ill-conditioned one (uncalibrated running statistics).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from mobileone_cli.fuse.generic_fuse import fuse_generic
from mobileone_cli.rules.tolerances import DEFAULT_ATOL, DEFAULT_RTOL, SENSITIVITY_FACTOR

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "family")
FIXTURES = {  # name -> {block type: count} the conversion must report
    "timm_fastvit_sa": {"MobileOneBlock": 7, "RepMixer": 3, "ReparamLargeKernelConv": 3,
                        "RepCPE": 1},
    "timm_fastvit_mci": {"MobileOneBlock": 7, "RepMixer": 4, "ReparamLargeKernelConv": 3,
                         "RepCPE": 1},
    "timm_fastvit_mci3": {"MobileOneBlock": 8, "RepMixer": 3, "ReparamLargeKernelConv": 4,
                          "RepCPE": 2},
    "timm_repvgg": {"RepVggBlock": 7},
    "timm_repghost": {"RepGhostModule": 10},
    "timm_mobileone": {"MobileOneBlock": 11},
    "original_repvgg": {"RepVGGBlock": 6},
    "apple_fastvit": {"MobileOneBlock": 7, "RepMixer": 3, "ReparamLargeKernelConv": 3,
                      "RepCPE": 1},
    "apple_mci0": {"MobileOneBlock": 7, "RepMixer": 4, "ReparamLargeKernelConv": 3,
                   "RepCPE": 1},
}


def _expected(name):
    return torch.load(os.path.join(HERE, f"{name}.expected.pth"), weights_only=True)


def _ill(sd, exp):
    """The fixture's ill-conditioned variant: its random running statistics put in."""
    out, at = dict(sd), 0
    for key in exp["ill_keys"]:
        n = sd[key].numel()
        out[key] = exp["ill_values"][at:at + n].reshape(sd[key].shape).clone()
        at += n
    assert at == exp["ill_values"].numel()
    return out


def _within_verdict(deployed, ref64, family32):
    """|ours - ref| against the verdict's bound; the family's own deploy error is the
    network's sensitivity to float32 rounding."""
    scale = float(ref64.abs().max())
    own = float((family32.double() - ref64).abs().max())
    bound = DEFAULT_ATOL + DEFAULT_RTOL * scale + SENSITIVITY_FACTOR * own
    err = float((deployed.double() - ref64).abs().max())
    assert err <= bound, (err, bound, own, scale)
    return err / scale


def _run_deploy(name, state_dict, x):
    net = torch.export.load(os.path.join(HERE, f"{name}.pt2")).module()
    net.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_family_file_loads_strict_and_matches(name, run_cli, tmp_path):
    from safetensors.torch import load_file

    src = os.path.join(HERE, f"{name}.safetensors")
    dst = str(tmp_path / f"{name}_deploy.pth")
    res = run_cli("convert", "--generic", src, dst, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    counts = {}
    for b in report["blocks"]:
        counts[b["block"]] = counts.get(b["block"], 0) + 1
    assert counts == FIXTURES[name]
    assert report["left_alone"] == []

    exp = _expected(name)
    train = load_file(src)
    out = torch.load(dst, weights_only=True)
    assert [(k, list(v.shape)) for k, v in sorted(out.items())] == sorted(
        (k, s) for k, s in exp["deploy_keys"])
    for k, v in out.items():  # every key the fusion did not write: the very same bytes
        if k in train:
            assert torch.equal(v, train[k]) and v.dtype == train[k].dtype, k
    rel = _within_verdict(_run_deploy(name, out, exp["input"]), exp["calibrated_ref64"],
                          exp["calibrated_deploy32"])
    assert rel < 1e-5, rel


@pytest.mark.parametrize("name", [n if n == "timm_fastvit_sa" else
                                  pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(FIXTURES)])
def test_family_ill_conditioned_variant(name):
    from safetensors.torch import load_file

    exp = _expected(name)
    sd = _ill(load_file(os.path.join(HERE, f"{name}.safetensors")), exp)
    out, report = fuse_generic(sd)
    assert len(report.blocks) == sum(FIXTURES[name].values())
    _within_verdict(_run_deploy(name, out, exp["input"]), exp["ill_ref64"],
                    exp["ill_deploy32"])


def test_a_wrong_fusion_is_outside_the_bound():
    """The bound is tight enough to fail: one RepMixer's layer scale ignored is caught."""
    from safetensors.torch import load_file

    name = "timm_fastvit_sa"
    exp = _expected(name)
    sd = load_file(os.path.join(HERE, f"{name}.safetensors"))
    out, report = fuse_generic(sd)
    mixer = next(b for b in report.blocks if b.block_type == "RepMixer")
    plain = {k: v for k, v in sd.items() if k != mixer.layer_scale_key}
    plain[mixer.layer_scale_key] = torch.ones_like(sd[mixer.layer_scale_key])
    wrong, _ = fuse_generic(plain)
    got = _run_deploy(name, wrong, exp["input"])
    with pytest.raises(AssertionError):
        _within_verdict(got, exp["calibrated_ref64"], exp["calibrated_deploy32"])


TIMM_BUILDERS = ("timm_fastvit_sa", "timm_fastvit_mci", "timm_fastvit_mci3", "timm_repvgg",
                 "timm_repghost", "timm_mobileone")


@pytest.mark.parametrize("name", TIMM_BUILDERS)
def test_family_file_loads_into_timm_itself(name):
    """Where timm imports: its own reparameterize_model() network loads the output strictly."""
    try:
        import timm  # noqa: F401
    except Exception as exc:  # not installed, or its torchvision does not load beside this torch
        pytest.skip(f"timm does not import here ({type(exc).__name__})")
    import importlib.util

    from safetensors.torch import load_file
    from timm.utils import reparameterize_model

    spec = importlib.util.spec_from_file_location(
        "make_family_fixtures", os.path.join(os.path.dirname(HERE), "make_family_fixtures.py"))
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    sd = load_file(os.path.join(HERE, f"{name}.safetensors"))
    model = getattr(maker, name)()
    model.load_state_dict(sd, strict=True)
    deploy = reparameterize_model(model.eval())
    out, _ = fuse_generic(sd)
    deploy.load_state_dict(out, strict=True)
    exp = _expected(name)
    with torch.no_grad():
        got = deploy(exp["input"])
    _within_verdict(got, exp["calibrated_ref64"], exp["calibrated_deploy32"])
