"""The one verdict rule (check.verdict.judge), on realistic and on ill-conditioned networks.

For s0..s4, with BatchNorm statistics calibrated like a trained network's and with random ones
(activations ~1e9, saturated SE gates), the rule must never fail an exact fusion in any storage
dtype, always fail a block scaled by 1.05 or a fusion with the wrong eps and name the block, and
``convert`` and ``verify`` must give the same verdict on the same file.  The deploy models under
test are built from an independent fusion (conftest.fold_by_hand), not by the fusion code the
tool uses.
"""
from __future__ import annotations

import functools
import json

import pytest
import torch

from mobileone_cli.check.harness import perturb, seeded_inputs
from mobileone_cli.check.verdict import judge
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.specs import get_arch
from mobileone_cli.rules.tolerances import DEFAULT_RTOL, SENSITIVITY_FACTOR

from .conftest import ARCHS, first_quick, fold_by_hand

SIZE = 64  # pixels: every stage sees more than one pixel (the last 2x2), and a check is quick
KINDS = ("calibrated", "random")
# A block whose error reaches the logits in every variant (s4: one with squeeze-excitation).
BLOCK = {"s0": "stage2.3", "s1": "stage3.2", "s2": "stage2.7", "s3": "stage3.5",
         "s4": "stage3.12"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@functools.lru_cache(maxsize=None)
def network(arch_name, kind):
    arch = get_arch(arch_name)
    sd = random_state_dict(arch, seed=ARCHS.index(arch_name) + 3, stats=kind)
    return arch, sd, fold_by_hand(sd, arch)


def scaled(deploy, block, factor=1.05):
    out = dict(deploy)
    for leaf in ("weight", "bias"):
        out[f"{block}.reparam_conv.{leaf}"] = out[f"{block}.reparam_conv.{leaf}"] * factor
    return out


def verdict(sd, deploy, arch, **kw):
    return judge(sd, deploy, arch, seeded_inputs(0, 1, (SIZE, SIZE)), **kw)


# s0 (k = 4), s1 (k = 1, the narrowest) and s4 (the widest, squeeze-excitation): s2 and s3 are
# s1's blocks at widths between s1's and s4's, and tests/test_convert.py passes their exact
# fusions through convert's check.
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch_name", first_quick("s0", "s1", "s4"))
def test_exact_fusions_pass_wrong_ones_fail_and_are_named(arch_name, kind):
    arch, sd, exact = network(arch_name, kind)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        stored = {k: v.to(dtype) for k, v in exact.items()}
        v = verdict(sd, stored, arch)
        assert v.passed, (dtype, v.summary())
        wrong = verdict(sd, scaled(stored, BLOCK[arch_name]), arch)
        assert not wrong.passed and wrong.first_bad.name == BLOCK[arch_name], \
            (dtype, wrong.summary())
        assert wrong.fp64 is not None  # a failure is always the float64 referee's
    wrong_eps = {k: v.float() for k, v in fold_by_hand(sd, arch, eps=1e-3).items()}
    v = verdict(sd, wrong_eps, arch)
    assert not v.passed and v.first_bad.name == "stage0", v.summary()


def test_ill_conditioned_network_is_passed_by_the_referee_and_reported():
    """A random-statistics s4 at 224 px: fp32 cannot tell an exact fusion from a wrong one at
    rtol 1e-4 (the issue's 5.3e-4 and 0.0996); the float64 referee can, and says how much this
    network amplifies rounding."""
    arch = get_arch("s4")
    sd = random_state_dict(arch, seed=11, stats="random")
    exact = {k: v.float() for k, v in fold_by_hand(sd, arch).items()}
    x = seeded_inputs(0, 1, (224, 224))
    v = judge(sd, exact, arch, x, rtol=DEFAULT_RTOL)  # a fixed rtol: no sensitivity allowance
    assert v.passed, v.summary()
    if not v.fp32.passed:  # the case the issue reports: decided by the referee
        assert v.rounding_explained and v.fp64.output.max_rel < DEFAULT_RTOL
        assert "up to fp32 rounding" in v.summary()
    assert v.train_fp32_vs_fp64 is None or v.train_fp32_vs_fp64.max_rel > 0


@pytest.mark.parametrize("kind", first_quick(*KINDS))
def test_a_failing_check_judges_fp32s_bad_blocks_alone_and_names_only_the_wrong_one(kind):
    """Float64 deploy weights at rtol 1e-9: fp32 arithmetic alone puts many blocks of the exact
    fusion beyond their bound.  The float64 referee, judging each alone on the train model's
    input of it, clears them all (the whole float64 pass then decides); with one late block
    scaled by 1 + 1e-6 it clears every block before it and ends at that block, without the
    whole pass (blocks after it keep fp32's verdict, as the report's note says).  Calibrated
    and random statistics (activations ~1e9) alike."""
    arch, sd, exact = network("s0", kind)
    ok = verdict(sd, exact, arch, rtol=1e-9)
    assert len(ok.fp32.bad_blocks) > 3, ok.fp32.bad_blocks  # fp32 rounding, not fusion
    assert ok.passed and ok.rounding_explained and ok.fp64.alone == [], ok.summary()
    for block in ("stage4.0", "linear"):
        moved = dict(exact)
        leaf = "linear.weight" if block == "linear" else f"{block}.reparam_conv.weight"
        moved[leaf] = moved[leaf] * (1 + 1e-6)
        wrong = verdict(sd, moved, arch, rtol=1e-9)
        order = [b.name for b in wrong.fp32.blocks]
        before = order[:order.index(block)]
        assert not wrong.passed and wrong.fp64.bad_blocks[0] == block, wrong.summary()
        assert not set(before) & set(wrong.fp64.bad_blocks)  # cleared by the referee
        assert wrong.fp64.alone[-1] == block and len(wrong.fp64.alone) > 3
        assert wrong.first_bad.name == block and f"breaks: {block}" in wrong.summary()
        assert wrong.train_fp32_vs_fp64 is None  # the whole float64 pass did not run


def test_sensitivity_is_the_effect_of_one_unit_roundoff_on_the_deploy_weights():
    """The measured sensitivity equals a hand-made perturbed run (independent of the harness)."""
    arch, sd, exact = network("s1", "calibrated")
    stored = {k: v.half() for k, v in exact.items()}
    v = verdict(sd, stored, arch)
    from mobileone_cli.models.mobileone import MobileOne

    def run(weights):
        m = MobileOne(arch, deploy=True)
        m.load_state_dict({k: t.float() for k, t in weights.items()})
        with torch.no_grad():
            return m.eval()(seeded_inputs(0, 1, (SIZE, SIZE))).double()

    unit = 2.0 ** -11
    base, moved = run(stored), run(perturb(stored, unit))
    s = v.fp32.sensitivity
    assert s.max_abs == pytest.approx(float((base - moved).abs().max()), rel=1e-5)
    assert v.amplification == pytest.approx(s.max_rel / unit)
    bound = DEFAULT_RTOL * v.fp32.output.scale + SENSITIVITY_FACTOR * s.max_abs
    assert v.fp32.output_bound == pytest.approx(bound)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_convert_and_verify_give_the_same_verdict(kind, tmp_path, run_cli):
    """Same file, same verdict: the single-file verify judges exactly what convert writes, and
    a deploy file verify fails is one convert would have refused."""
    arch = get_arch("s4")
    sd = random_state_dict(arch, seed=12, stats=kind)
    src = str(tmp_path / "train.pth")
    save_checkpoint(src, sd)
    out = tmp_path / "deploy.pth"
    conv = run_cli("convert", src, str(out), "--json", "--input-size", str(SIZE))
    ver = run_cli("verify", src, "--json", "--input-size", str(SIZE), "--batch", "1")
    assert conv.exit_code == 0 and ver.exit_code == 0, (conv.output, ver.output)
    c, v = json.loads(conv.stdout)["check"], json.loads(ver.stdout)
    assert c["passed"] and v["passed"]
    assert c["fp32"]["output"]["max_abs"] == pytest.approx(v["fp32"]["output"]["max_abs"],
                                                           rel=1e-9, abs=1e-12)
    assert c["decided_in"] == v["decided_in"]
    # The written file against the train file: the same numbers again.
    two = json.loads(run_cli("verify", src, str(out), "--json", "--input-size", str(SIZE),
                             "--batch", "1").stdout)
    assert two["passed"] and two["fp32"]["output"]["max_abs"] == pytest.approx(
        c["fp32"]["output"]["max_abs"], rel=1e-9, abs=1e-12)


def test_convert_refuses_what_verify_fails(tmp_path, monkeypatch, run_cli):
    """A fusion bug (one block scaled inside the tool) makes convert exit 1, write nothing, and
    name the same block verify names for the same deploy tensors."""
    import mobileone_cli.fuse.fusion as fusion

    arch = get_arch("s1")
    sd = random_state_dict(arch, seed=13)
    src = str(tmp_path / "train.pth")
    save_checkpoint(src, sd)
    real = fusion.fuse_block

    def buggy(state_dict, block, **kw):
        out = real(state_dict, block, **kw)
        if block.name == BLOCK["s1"]:
            out = {k: v * 1.05 if "reparam" in k else v for k, v in out.items()}
        return out

    monkeypatch.setattr(fusion, "fuse_block", buggy)
    dst = tmp_path / "deploy.pth"
    res = run_cli("convert", src, str(dst), "--input-size", str(SIZE))
    assert res.exit_code == 1 and not dst.exists()
    assert f"first block that breaks: {BLOCK['s1']}" in res.stderr
    assert "nothing was written" in res.stderr
    res = run_cli("verify", src, "--input-size", str(SIZE), "--batch", "1")
    # verify's report says it (once, on stdout), convert's error line above
    assert res.exit_code == 1 and f"first block that breaks: {BLOCK['s1']}" in res.stdout
