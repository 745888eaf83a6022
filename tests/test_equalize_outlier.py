"""``quant --equalize`` on the trained digits_s0 with an outlier channel injected the way training
a re-parameterized network can leave one: output channel 0 of the depthwise block stage4.0
(every branch's BatchNorm gamma and beta) x200, input channel 0 of the pointwise stage4.1 (every
branch's conv) /200.  ReLU(s y) = s ReLU(y) for s > 0, so the network computes the same
function; per-tensor int8 does not survive it, and equalization undoes it.

The product's numbers are recomputed by reference_int8 (tests/test_equalize_quant.py: fake
quantization with F.conv2d, numpy equalization, bias correction by numerical integration).
"""
from __future__ import annotations

import pytest
import torch

from mobileone_cli.assets import digits as assets
from mobileone_cli.data.digits import heldout_images
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.trained import trained_state_dict

from .conftest import fold_by_hand
from .test_equalize_quant import heldout_quant, reference_int8

DEPTHWISE, POINTWISE, CHANNEL, FACTOR = "stage4.0", "stage4.1", 0, 200.0
DIGITS = 60  # held-out images the product measures here (~0.4 s each on a busy CPU)

# docs/quant.md's outlier table: all 360 held-out images, (logits SQNR dB, top-1)
DOCS = {"fp32": 356 / 360, "plain": (3.63, 253 / 360), "equalized": (33.74, 356 / 360)}


def inject_outlier(train, depthwise=DEPTHWISE, pointwise=POINTWISE, channel=CHANNEL,
                   factor=FACTOR):
    """``train`` with output ``channel`` of ``depthwise`` x ``factor`` and the matching input
    channel of ``pointwise`` / ``factor`` (the pointwise block must have no identity branch)."""
    specs = {b.name: b for b in assets.arch("s0").block_specs()}
    a, b = specs[depthwise], specs[pointwise]
    assert a.groups > 1 and b.groups == 1 and not b.has_identity
    sd = dict(train)
    bns = [f"{depthwise}.rbr_conv.{i}.bn." for i in range(a.conv_branches)]
    bns += [f"{depthwise}.rbr_scale.bn."] if a.has_scale else []
    bns += [f"{depthwise}.rbr_skip."] if a.has_identity else []
    for key in [p + leaf for p in bns for leaf in ("weight", "bias")]:
        sd[key] = sd[key].clone()
        sd[key][channel] *= factor
    for i in range(b.conv_branches):
        key = f"{pointwise}.rbr_conv.{i}.conv.weight"
        sd[key] = sd[key].clone()
        sd[key][:, channel] /= factor
    return sd


@pytest.fixture(scope="module")
def train():
    return trained_state_dict("s0")


@pytest.fixture(scope="module")
def outlier(train):
    return inject_outlier(train)


def _logits_and_activation(sd, x):
    m = MobileOne(assets.arch("s0")).double()
    m.load_state_dict(sd)  # float64 parameters: the float32 values are taken exactly
    m.eval()
    acts = []
    h = m.get_submodule(DEPTHWISE).register_forward_hook(lambda _m, _i, o: acts.append(o))
    with torch.no_grad():
        out = m(x.double())
    h.remove()
    return out, acts[0]


def test_injection_computes_the_same_function(train, outlier):
    """float64 train models in eval mode: injected in float64, the logits are equal to float64
    rounding; the float32 file the product reads differs by its parameters' float32 rounding."""
    x, _ = heldout_images(40)
    ref, act = _logits_and_activation(train, x)
    exact, act64 = _logits_and_activation(
        inject_outlier({k: v.double() if v.is_floating_point() else v for k, v in train.items()}),
        x)
    scale = float(ref.abs().max())
    assert torch.allclose(exact, ref, rtol=0, atol=1e-12 * scale)
    got, _ = _logits_and_activation(outlier, x)
    assert torch.allclose(got, ref, rtol=0, atol=1e-7 * scale)
    ratio = act64[:, CHANNEL].abs().max() / act[:, CHANNEL].abs().max()
    assert float(ratio) == pytest.approx(FACTOR, rel=1e-12)
    assert torch.allclose(act64[:, CHANNEL + 1:], act[:, CHANNEL + 1:], rtol=0, atol=0)
    # the fused depthwise kernel now has one channel far outside the rest
    w = fold_by_hand(outlier, assets.arch("s0"))[f"{DEPTHWISE}.reparam_conv.weight"]
    amax = w.abs().flatten(1).amax(1)
    assert float(amax[CHANNEL] / amax[1:].max()) > 20


@pytest.mark.parametrize("equalize", [False, True])
def test_the_documented_numbers(outlier, equalize):
    """docs/quant.md's table recomputed independently on all held-out images: plain per-tensor
    int8 loses a third of the images, equalization brings the fp32 top-1 back."""
    x, y = heldout_images()
    db, top1, fp32 = reference_int8(outlier, assets.arch("s0"), x, y, equalize)
    assert fp32 == pytest.approx(DOCS["fp32"], abs=0.5 / len(y))
    want_db, want_top1 = DOCS["equalized" if equalize else "plain"]
    assert db == pytest.approx(want_db, abs=0.1)
    assert top1 == pytest.approx(want_top1, abs=1.5 / len(y))  # one image
    if equalize:
        assert top1 >= fp32 - 1.5 / len(y) and db > 30
    else:
        assert top1 < fp32 - 0.2 and db < 10


@pytest.mark.slow
def test_product_drops_then_recovers_and_agrees_with_the_reference(outlier, tmp_path):
    src = tmp_path / "outlier.pth"
    save_checkpoint(str(src), outlier, force=True)
    r = heldout_quant(str(src), tmp_path / "digits", DIGITS)
    e = r.equalized
    before, after = e.before["per-tensor"], e.after["per-tensor"]
    assert before.images == after.images == DIGITS
    assert e.bias_corrected and e.equalization.converged
    x, y = heldout_images(DIGITS)
    for res, eq in ((before, False), (after, True)):
        db, top1, fp32 = reference_int8(outlier, assets.arch("s0"), x, y, eq)
        assert res.output_db == pytest.approx(db, abs=0.1), eq
        assert res.accuracy_int8[0] == pytest.approx(top1, abs=1.5 / DIGITS), eq
        assert res.accuracy_fp32[0] == pytest.approx(fp32, abs=0.5 / DIGITS), eq
    fp32 = before.accuracy_fp32[0]
    assert before.accuracy_int8[0] < fp32 - 0.15 and before.output_db < 10
    assert after.accuracy_int8[0] >= fp32 - 1.5 / DIGITS and after.output_db > 30
