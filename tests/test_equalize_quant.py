"""``quant --equalize``: int8 before and after data-free quantization, on a synthetic network with
an injected outlier channel and on the trained digits network (labelled held-out images).

The trained network's numbers are recomputed here by a fake-quantized forward pass written with
F.conv2d, an equalization written in numpy (tests/test_equalize.py) and a bias correction from
a numerical integration of the normal density: nothing of mobileone_cli.quant or
mobileone_cli.fuse.equalize.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.jobs.quant import quantize_file

from .conftest import fold_by_hand, recalibrated
from .test_equalize import TINY, _train, reference_equalize, relu_mean_numeric
from .test_quant import _aq, _sqnr, _wq

OUTLIER = "stage2.2"  # a depthwise block of TINY
PER_PASS = 4  # images per forward pass of quant on 64x64 images (check.harness.per_pass)
DIGITS = 60  # held-out images quant measures in the test (each image costs ~3 passes x 4)


def _outlier_train(seed=0):
    """TINY with output channel 3 of OUTLIER's first branch x100, statistics measured again."""
    sd = _train(TINY, seed=seed)
    for leaf in ("bn.weight", "bn.bias"):
        k = f"{OUTLIER}.rbr_conv.0.{leaf}"
        sd[k] = sd[k].clone()
        sd[k][3] *= 100
    return recalibrated(TINY, sd, seed, 32)


@pytest.fixture(scope="module")
def outlier_report(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("eq") / "outlier.pth")
    save_checkpoint(path, _outlier_train(), force=True)
    return quantize_file(path, arch=TINY, equalize=True, scheme="per-tensor", synthetic=6,
                         input_size=(32, 32))


def test_outlier_channel_per_tensor_sqnr_improves(outlier_report):
    r = outlier_report
    e = r.equalized
    assert e.before["per-tensor"] is r.deploy
    before, after = e.before["per-tensor"], e.after["per-tensor"]
    assert after.output_db > before.output_db + 6, (before.output_db, after.output_db)
    spread = {b.name: b.spread for b in before.blocks}
    assert spread[OUTLIER] > 20
    assert {b.name: b.spread for b in after.blocks}[OUTLIER] < spread[OUTLIER] / 4
    assert e.bias_corrected and e.equalization.converged and not e.equalization.skipped
    assert set(e.after) == {"per-tensor", "per-channel"}


def test_outlier_report_renders_and_serializes(outlier_report):
    import json

    from mobileone_cli.render.quant import quant_to_dict, result_line

    d = json.loads(json.dumps(quant_to_dict(outlier_report)))
    eq = d["equalized"]
    assert eq["after"]["per-tensor"]["output_db"] == pytest.approx(
        outlier_report.equalized.after["per-tensor"].output_db)
    assert eq["equalization"]["equalized"] == 9 and eq["bias_corrected"] is True
    assert "equalized: per-tensor" in result_line(outlier_report)


# ---------------------------------------------------------------- the trained network


def reference_int8(train, arch, x, y, equalize, per_channel=False):
    """int8 of the digits network by hand: (output SQNR, top-1, fp32 top-1).
    ``equalize``: the numpy equalization, and biases corrected by (W_q - W) E[x] with E[x] the
    clipped-normal mean of the previous block's branch BatchNorms (beta summed, gamma^2
    summed)."""
    specs = list(arch.block_specs())
    dep = {k: v.double() for k, v in fold_by_hand(train, arch).items()}
    qbias = {}
    if equalize:
        from mobileone_cli.fuse.equalize import equalize_state_dict

        sweeps = equalize_state_dict(dep, arch)[1].sweeps  # only how many times to sweep
        w, total = reference_equalize(dep, arch, sweeps)
        dep = {k: torch.from_numpy(v) for k, v in w.items()}
        for a, b in zip(specs, specs[1:] + [None]):
            bns = [f"{a.name}.rbr_conv.{i}.bn." for i in range(a.conv_branches)]
            bns += [f"{a.name}.rbr_scale.bn."] if a.has_scale else []
            bns += [f"{a.name}.rbr_skip."] if a.has_identity else []
            m = sum(train[k + "bias"].double().numpy() for k in bns)
            s = np.sqrt(sum(train[k + "weight"].double().numpy() ** 2 for k in bns))
            mean = torch.from_numpy(relu_mean_numeric(m, s) / total[a.name])
            name = "linear" if b is None else b.name
            wk = dep[f"{name}.weight" if b is None else f"{name}.reparam_conv.weight"]
            dw = _wq(wk, per_channel).double() - wk
            if b is None:
                shift = dw @ mean
            elif b.groups == 1:
                shift = (dw.sum((2, 3)) * mean).sum(1)
            else:
                shift = dw.sum((1, 2, 3)) * mean
            bk = "linear.bias" if b is None else f"{name}.reparam_conv.bias"
            qbias[bk] = (dep[bk] - shift).float()
    dep = {k: v.float() for k, v in dep.items()}

    def block(b, t, quant):
        k, bias = dep[f"{b.name}.reparam_conv.weight"], dep[f"{b.name}.reparam_conv.bias"]
        if quant:
            k, bias = _wq(k, per_channel), qbias.get(f"{b.name}.reparam_conv.bias", bias)
        return F.relu(F.conv2d(t, k, bias, b.stride, b.padding, groups=b.groups))

    def fp32(t):
        acts = {"input": t}
        for b in specs:
            t = acts[b.name] = block(b, t, False)
        pooled = acts["pooled"] = t.mean((2, 3))
        acts["linear"] = F.linear(pooled, dep["linear.weight"], dep["linear.bias"])
        return acts

    def int8(t):
        t = _aq(t, *rng["input"])
        for b in specs:
            t = _aq(block(b, t, True), *rng[b.name])
        return _aq(F.linear(_aq(t.mean((2, 3)), *rng["pooled"]),
                            _wq(dep["linear.weight"], per_channel),
                            qbias.get("linear.bias", dep["linear.bias"])), *rng["linear"])

    # fp32 convolutions round differently with the batch size and the thread count, and the
    # few int8 roundings that go the other way move the SQNR of 60 images by ~0.05 dB (one
    # thread against two): the forward runs in quant's passes, so both see the same fp32 values.
    with torch.no_grad():
        passes = [x[i:i + PER_PASS] for i in range(0, x.shape[0], PER_PASS)]
        chunks = [fp32(t) for t in passes]
        acts = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
        ref = acts["linear"]
        rng = {k: (float(v.min()), float(v.max())) for k, v in acts.items()}
        out = torch.cat([int8(t) for t in passes])
    top1 = float((out.argmax(1) == y).double().mean())
    return _sqnr(ref, out), top1, float((ref.argmax(1) == y).double().mean())


def heldout_quant(ckpt, root, n):
    """``quantize_file(ckpt, equalize=True)`` per-tensor on the first ``n`` held-out digits,
    written as PNGs under ``root`` and read with the digits preprocessing."""
    Image = pytest.importorskip("PIL.Image")
    from mobileone_cli.assets import digits as assets
    from mobileone_cli.data.digits import heldout_pixels
    from mobileone_cli.data.pipeline import make_preprocessing

    pixels, labels = heldout_pixels()
    for i, (p, c) in enumerate(zip(pixels[:n], labels[:n])):
        folder = root / str(int(c))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p, "L").save(str(folder / f"{i:03d}.png"))
    opts = dict(zip(assets.EVAL_OPTIONS[::2], assets.EVAL_OPTIONS[1::2]))
    prep = make_preprocessing(int(opts["--resize"]), opts["--crop"], opts["--interpolation"],
                              opts["--mean"], opts["--std"])
    return quantize_file(ckpt, arch=assets.arch("s0"), calib=str(root), preprocessing=prep,
                         equalize=True, scheme="per-tensor", input_size=(assets.SIZE, assets.SIZE),
                         workers=0)


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    from mobileone_cli.assets import digits as assets

    return heldout_quant(assets.checkpoint_path("s0"), tmp_path_factory.mktemp("digits"), DIGITS)


@pytest.mark.slow
def test_trained_network_per_tensor_sqnr_improves_and_top1_holds(digits_report):
    from mobileone_cli.assets import digits as assets
    from mobileone_cli.check.harness import per_pass
    from mobileone_cli.data.digits import heldout_images
    from mobileone_cli.models.trained import trained_state_dict

    assert per_pass((assets.SIZE, assets.SIZE)) == PER_PASS  # the reference's passes are quant's
    e = digits_report.equalized
    before, after = e.before["per-tensor"], e.after["per-tensor"]
    assert before.images == DIGITS and before.accuracy_int8 is not None
    x, y = heldout_images(DIGITS)
    train, arch = trained_state_dict("s0"), assets.arch("s0")
    for res, eq in ((before, False), (after, True)):
        db, top1, fp32 = reference_int8(train, arch, x, y, eq)
        assert res.output_db == pytest.approx(db, abs=0.05)
        assert res.accuracy_int8[0] == pytest.approx(top1, abs=1.5 / DIGITS)
        assert res.accuracy_fp32[0] == pytest.approx(fp32, abs=1.5 / DIGITS)
    # a well-trained network without outlier channels: per-tensor int8 already keeps the fp32
    # top-1, so equalization can only raise the SQNR; the top-1 must hold
    assert after.output_db > before.output_db + 0.5
    assert after.accuracy_int8[0] >= before.accuracy_int8[0] - 1 / DIGITS
    assert not math.isnan(after.output_db)


# docs/quant.md's table: digits_s0 on all 360 held-out images, `quant --equalize`
DOCS = {"per-tensor": ((31.18, 356 / 360), (33.14, 356 / 360)),
        "per-channel": ((34.29, 356 / 360), (33.76, 356 / 360))}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", sorted(DOCS))
def test_the_documented_digits_numbers(scheme):
    """The numbers docs/quant.md quotes, recomputed independently on all held-out images."""
    from mobileone_cli.assets import digits as assets
    from mobileone_cli.data.digits import heldout_images
    from mobileone_cli.models.trained import trained_state_dict

    x, y = heldout_images()
    train, arch = trained_state_dict("s0"), assets.arch("s0")
    for (db, top1), eq in zip(DOCS[scheme], (False, True)):
        got_db, got_top1, _ = reference_int8(train, arch, x, y, eq, scheme == "per-channel")
        assert got_db == pytest.approx(db, abs=0.05), (eq, got_db)
        assert got_top1 == pytest.approx(top1, abs=1.5 / len(y)), (eq, got_top1)  # one image


@pytest.mark.slow
def test_export_writes_the_equalized_int8_program(tmp_path):
    """--equalize --export: the .pte is the equalized, bias-corrected model; executed here with
    executorch's runtime, it agrees with the fp32 deploy model about as its report says."""
    pytest.importorskip("executorch")
    pytest.importorskip("torchao")
    from executorch.runtime import Runtime

    from mobileone_cli.check.harness import load_model, seeded_inputs
    from mobileone_cli.fuse.fusion import fuse_state_dict

    src, pte = str(tmp_path / "outlier.pth"), str(tmp_path / "eq.pte")
    train = _outlier_train()
    save_checkpoint(src, train, force=True)
    r = quantize_file(src, arch=TINY, equalize=True, scheme="per-tensor", synthetic=4,
                      input_size=(32, 32), export=pte)
    assert r.export.equalized and r.export.images == 4
    method = Runtime.get().load_program(pte).load_method("forward")
    deploy = load_model(fuse_state_dict(train, TINY), TINY, "deploy", dtype=torch.float32)
    xs = [seeded_inputs(i, 1, (32, 32)) for i in range(4)]
    with torch.no_grad():
        ref = torch.cat([deploy(x) for x in xs])
    out = torch.cat([method.execute([x])[0] for x in xs]).reshape(ref.shape)
    assert r.export.output_db == pytest.approx(_sqnr(ref, out), abs=0.01)
    assert r.export.output_db > r.deploy.output_db  # better than plain per-tensor fake quant
