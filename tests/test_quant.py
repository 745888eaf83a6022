"""``mobileone quant``: int8 post-training quantization measured block by block, and the int8
ExecuTorch program it writes.

The numbers are checked against a fake quantization written here from the definitions
(symmetric int8 weights, affine int8 activations from calibration min/max, SQNR in dB) on a
forward pass written here with F.conv2d, sharing nothing with mobileone_cli.quant; the .pte's
stated agreement against the test executing the file itself with executorch.runtime.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from mobileone_cli.check.harness import load_model, seeded_inputs
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.jobs.quant import quantize_file
from mobileone_cli.arch.specs import get_arch

from .conftest import fold_by_hand, invoke, recalibrated

HAVE_ET = all(importlib.util.find_spec(m) is not None for m in ("executorch", "torchao"))
needs_et = pytest.mark.skipif(not HAVE_ET, reason="executorch not installed (pip install "
                              "'mobileone-cli[executorch]')")
SIZE = 64
OUTLIER = "stage2.8"  # a depthwise block; its first conv branch gets a 100x output channel
N = 6  # synthetic calibration images


def outlier_state_dict(seed=0, block=OUTLIER):
    arch = get_arch("s0")
    sd = random_state_dict(arch, stats="calibrated", seed=seed)
    for leaf in ("bn.weight", "bn.bias"):  # the branch's output channel 3, times 100
        k = f"{block}.rbr_conv.0.{leaf}"
        sd[k] = sd[k].clone()
        sd[k][3] *= 100
    # the outlier channel's BatchNorm keeps its 100x gamma/beta, the blocks after it see it
    return recalibrated(arch, sd, seed, SIZE)


@pytest.fixture(scope="module")
def outlier_ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("quant") / "outlier_train.pth")
    save_checkpoint(path, outlier_state_dict(), force=True)
    return path


def _run(ckpt, **kw):
    kw.setdefault("synthetic", N)
    kw.setdefault("input_size", (SIZE, SIZE))
    return quantize_file(ckpt, **kw)


# ---------------------------------------------------------------- the independent reference

def _wq(w, per_channel):
    w = w.double()
    amax = (w.abs().reshape(w.shape[0], -1).amax(1).reshape(-1, *[1] * (w.dim() - 1))
            if per_channel else w.abs().max())
    s = torch.clamp(amax / 127, min=torch.finfo(torch.float32).eps)
    return (torch.clamp(torch.round(w / s), -127, 127) * s).float()


def _aq(x, lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = max((hi - lo) / 255, torch.finfo(torch.float32).eps)
    z = min(127, max(-128, -128 - round(lo / s)))
    q = torch.clamp(torch.round(x.double() / s) + z, -128, 127)
    return ((q - z) * s).float()


def _sqnr(ref, out):
    r, o = ref.double(), out.double()
    return 10 * math.log10(float(r.pow(2).sum()) / float((r - o).pow(2).sum()))


def reference(deploy_sd, arch, x, per_channel):
    """Own and cumulative SQNR of every deploy block and of the logits, by hand."""
    specs = arch.block_specs()
    w = {b.name: (deploy_sd[f"{b.name}.reparam_conv.weight"],
                  deploy_sd[f"{b.name}.reparam_conv.bias"], b) for b in specs}

    def block(name, t, quant):
        k, bias, b = w[name]
        k = _wq(k, per_channel) if quant else k
        return F.relu(F.conv2d(t, k, bias, b.stride, b.padding, groups=b.groups))

    # fp32 pass: every tensor and its range
    acts, t = {"input": x}, x
    for b in specs:
        t = acts[b.name] = block(b.name, t, False)
    pooled = acts["pooled"] = t.mean((2, 3))
    acts["linear"] = F.linear(pooled, deploy_sd["linear.weight"], deploy_sd["linear.bias"])
    rng = {k: (float(v.min()), float(v.max())) for k, v in acts.items()}
    own, cum = {}, {}
    prev = "input"
    for i, b in enumerate(specs):
        inp = _aq(acts["input"], *rng["input"]) if i == 0 else acts[prev]
        own[b.name] = _sqnr(acts[b.name], _aq(block(b.name, inp, True), *rng[b.name]))
        prev = b.name
    lw = _wq(deploy_sd["linear.weight"], per_channel)
    own["linear"] = _sqnr(acts["linear"], _aq(F.linear(_aq(pooled, *rng["pooled"]), lw,
                                                       deploy_sd["linear.bias"]),
                                              *rng["linear"]))
    t = _aq(x, *rng["input"])
    for b in specs:
        t = _aq(block(b.name, t, True), *rng[b.name])
        cum[b.name] = _sqnr(acts[b.name], t)
    logits = _aq(F.linear(_aq(t.mean((2, 3)), *rng["pooled"]), lw, deploy_sd["linear.bias"]),
                 *rng["linear"])
    cum["linear"] = _sqnr(acts["linear"], logits)
    return own, cum, acts["linear"], logits


@pytest.mark.parametrize("scheme", ["per-channel", "per-tensor"])
def test_block_sqnr_matches_an_independent_fake_quantization(outlier_ckpt, scheme):
    r = _run(outlier_ckpt, scheme=scheme)
    arch = get_arch("s0")
    sd = {k: v.float() for k, v in  # an independent fusion too
          fold_by_hand(torch.load(outlier_ckpt), arch).items()}
    x = torch.cat([seeded_inputs(i, 1, (SIZE, SIZE)) for i in range(N)])
    with torch.no_grad():
        own, cum, ref, out = reference(sd, arch, x, scheme == "per-channel")
    for b in r.deploy.blocks:
        assert b.own_db == pytest.approx(own[b.name], abs=0.05), b.name
        assert b.cumulative_db == pytest.approx(cum[b.name], abs=0.05), b.name
    assert r.deploy.output_db == pytest.approx(cum["linear"], abs=0.05)
    same = (ref.argmax(1) == out.argmax(1)).double().mean().item()
    assert r.deploy.top1_agreement == pytest.approx(same)
    assert r.deploy.images == N


def test_the_outlier_block_is_flagged_first(outlier_ckpt):
    r = _run(outlier_ckpt)
    assert r.deploy.flagged and r.deploy.flagged[0] == OUTLIER, r.deploy.flagged
    blocks = {b.name: b for b in r.deploy.blocks}
    # its fused kernel carries the outlier: the widest weight range of the network
    assert max(r.deploy.blocks, key=lambda b: b.spread or 0).name == OUTLIER
    assert blocks[OUTLIER].spread > 20


@pytest.mark.slow
@pytest.mark.parametrize("seed, block", [(3, "stage1.2"), (7, "stage2.3")])
def test_the_outlier_block_is_flagged_first_elsewhere(tmp_path, seed, block):
    path = str(tmp_path / "o.pth")
    save_checkpoint(path, outlier_state_dict(seed, block), force=True)
    assert _run(path).deploy.flagged[0] == block


def test_per_channel_beats_per_tensor_on_the_outlier_network(outlier_ckpt):
    pc = _run(outlier_ckpt, scheme="per-channel").deploy
    pt = _run(outlier_ckpt, scheme="per-tensor").deploy
    assert pc.output_db > pt.output_db + 3
    assert {b.name: b.own_db for b in pc.blocks}[OUTLIER] > \
        {b.name: b.own_db for b in pt.blocks}[OUTLIER]


def test_an_ill_conditioned_network_gives_finite_numbers(tmp_path):
    """Random BatchNorm statistics (activations ~1e9): fake quantization is scale-free, so
    every SQNR is a finite number, never NaN."""
    path = str(tmp_path / "random.pth")
    save_checkpoint(path, random_state_dict(get_arch("s0"), stats="random", seed=1), force=True)
    r = _run(path, synthetic=2)
    for b in r.deploy.blocks:
        for v in (b.own_db, b.cumulative_db, b.channel_db):
            assert v is None or math.isfinite(v), b
    assert r.deploy.output_db is not None and math.isfinite(r.deploy.output_db)


# ---------------------------------------------------------------- the int8 .pte

def _execute_pte(path, xs):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    return torch.cat([method.execute([x])[0] for x in xs])


@pytest.mark.slow  # PT2E calibration, XNNPACK lowering and an ExecuTorch run
@needs_et
def test_the_int8_program_runs_and_its_agreement_is_what_the_report_says(tmp_path, capsys,
                                                                        monkeypatch):
    """The custom network (SE, k = 2, 10 classes): the program is prepared, calibrated and
    lowered the same way for any network, and s0's takes seconds longer (the detection of a
    released variant is the other tests' subject, on the outlier s0).  The report's text is
    what docs/quant.md shows of its s0 export (there the command line is only parsed)."""
    from mobileone_cli.io.configfile import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    arch = load_config(os.path.join(root, "examples", "custom_3stage.yaml"))
    sd = random_state_dict(arch, seed=5)
    ckpt = str(tmp_path / "custom.pth")
    save_checkpoint(ckpt, sd, force=True)
    kw = {"arch": arch}
    out = str(tmp_path / "q.pte")
    r = _run(ckpt, synthetic=4, export=out, **kw)
    assert os.path.isfile(out) and r.export.size == os.path.getsize(out)
    xs = [seeded_inputs(i, 1, (SIZE, SIZE)) for i in range(4)]
    got = _execute_pte(out, xs).float()
    with torch.no_grad():  # the fp32 function: the TRAIN model in eval mode
        ref = load_model(sd, arch, "train")(torch.cat(xs))
    e = r.export
    assert e.images == 4
    assert e.output_db == pytest.approx(_sqnr(ref, got), abs=1e-3)
    assert e.max_abs_diff == pytest.approx(float((ref - got).abs().max()),
                                           abs=1e-4 * float(ref.abs().max()))
    assert e.top1_agreement == (ref.argmax(1) == got.argmax(1)).double().mean().item()
    assert torch.isfinite(got).all() and e.output_db > 0  # int8, but the same function
    from mobileone_cli.render.quant import render_quant

    monkeypatch.setenv("COLUMNS", "80")
    render_quant(r)
    printed = capsys.readouterr().out
    text = " ".join(printed.split())
    for shown in ("end to end, against fp32 on the 4 calibration images", ".pte (run)",
                  f"SQNR logits dB {r.deploy.output_db:.1f} {e.output_db:.1f}",
                  "top-1 agreement", "top-5 agreement", "max |diff|",
                  "int8 per-channel, PT2E + XNNPACK): executed in the ExecuTorch runtime on 4 "
                  "images; outside the XNNPACK delegate: aten.mean.dim"):
        assert shown in text, (shown, text)
    # the path may be longer than a line (folded there): compared without whitespace
    assert f"wrote{out}(" in "".join(printed.split()), printed


# ---------------------------------------------------------------- the command

def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_json_shape_and_compare_train(outlier_ckpt):
    d = _json(invoke("quant", outlier_ckpt, "--calib-synthetic", "3", "--input-size", "64",
                     "--compare-train", "--json"))
    assert d["arch"] == "s0" and d["fused_in_memory"] and d["scheme"] == "per-channel"
    assert d["calibration"]["kind"] == "synthetic" and d["calibration"]["images"] == 3
    for form in ("deploy", "train"):
        f = d[form]
        assert f["form"] == form and len(f["blocks"]) == 44  # 43 blocks and the head
        assert {"name", "spread", "own_db", "channel_db", "cumulative_db", "flagged"} <= \
            set(f["blocks"][0])
        assert isinstance(f["output_db"], float) and 0 <= f["top1_agreement"] <= 1
    assert d["train"]["blocks"][0]["branches"] == 2  # the stem: a conv and a scale branch
    assert d["export"] is None


def test_fits_80_columns(outlier_ckpt):
    res = invoke("quant", outlier_ckpt, "--calib-synthetic", "2", "--input-size", "64",
                 "--compare-train")
    assert res.exit_code == 0, res.output
    # the finding stays one line, grep-able, like verify's PASS/FAIL
    wide = [ln for ln in res.stdout.splitlines()
            if len(ln.rstrip()) > 80 and not ln.startswith("FLAG: ")]
    assert not wide, wide
    assert f"FLAG: {OUTLIER}" in res.stdout


def test_quiet_line_and_plot_show_the_reported_numbers(outlier_ckpt, tmp_path):
    import math
    import xml.etree.ElementTree as ET

    args = ("quant", outlier_ckpt, "--calib-synthetic", "2", "--input-size", "64")
    d = _json(invoke(*args, "--json"))
    res = invoke("-q", *args, "--plot", tmp_path / "q.svg")
    assert res.exit_code == 0, res.output
    f = d["deploy"]
    assert res.stdout.splitlines() == [
        f"int8 per-channel: logits SQNR {f['output_db']:.1f} dB, top-1 agreement "
        f"{100 * f['top1_agreement']:.1f}%; FLAG: {OUTLIER}" + res.stdout.split(OUTLIER, 1)[1]
        .rstrip("\n")]
    root = ET.parse(tmp_path / "q.svg").getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    bars = {e.get("data-name"): e for e in root.iterfind(".//s:rect[@class='bar']", ns)}
    assert list(bars) == [b["name"] for b in f["blocks"]]
    red = {n for n, e in bars.items() if e.get("fill") == "#c0392b"}
    assert red == {b["name"] for b in f["blocks"] if b["flagged"]} and OUTLIER in red
    # the longest bar is the block whose median channel keeps the fewest dB
    width = {n: float(e.get("width")) for n, e in bars.items()}
    worst = min((b for b in f["blocks"] if b["channel_db"] is not None),
                key=lambda b: b["channel_db"])
    assert max(width, key=width.get) == worst["name"] and not math.isnan(sum(width.values()))


def test_labelled_images_give_the_accuracy_eval_gives(tmp_path, outlier_ckpt):
    from mobileone_cli.jobs.eval import evaluate_files

    from .imaging import pattern, write_image

    for c in range(3):  # classes 0..2 of the 1000
        for i in range(2):
            write_image(str(tmp_path / "val" / f"c{c}" / f"{i}.png"), pattern(80, 72, 3 * c + i))
    ckpt = outlier_ckpt
    r = _run(ckpt, calib=str(tmp_path / "val"), synthetic=None)
    from mobileone_cli.data.pipeline import make_preprocessing

    ev = evaluate_files(ckpt, str(tmp_path / "val"), preprocessing=make_preprocessing(crop="64"),
                        workers=0)
    assert r.calibration.kind == "images" and r.calibration.images == 6
    assert r.calibration.preprocessing == make_preprocessing(crop="64").describe()
    assert r.deploy.accuracy_fp32[0] == pytest.approx(ev.models[1].accuracy.top1)


@pytest.mark.parametrize("args, msg", [
    (["--calib", "nowhere"], "not a directory"),
    (["--calib-synthetic", "0"], "must be between 1 and"),
    (["--calib-synthetic", "-3"], "must be between 1 and"),
    (["--calib-synthetic", "100000"], "must be between 1 and"),
    (["--calib-synthetic", "2", "--calib", "."], "not both"),
    (["--export", "q.onnx"], "name it .pte"),
])
def test_bad_input_exits_2(outlier_ckpt, tmp_path, monkeypatch, args, msg):
    monkeypatch.chdir(tmp_path)
    res = invoke("quant", outlier_ckpt, "--input-size", "64", *args)
    assert res.exit_code == 2 and msg in res.stderr, res.output
    assert "Traceback" not in res.output and not os.listdir(tmp_path)


def test_compare_train_needs_the_train_checkpoint(tmp_path, outlier_ckpt):
    from mobileone_cli.fuse.fusion import fuse_state_dict

    deploy = str(tmp_path / "deploy.pth")
    save_checkpoint(deploy, fuse_state_dict(torch.load(outlier_ckpt), get_arch("s0")))
    res = invoke("quant", deploy, "--compare-train",
                 "--calib-synthetic", "1", "--input-size", "64")
    assert res.exit_code == 2 and "deploy-form" in res.stderr, res.output


@needs_et
def test_an_existing_program_is_never_overwritten_without_force(outlier_ckpt, tmp_path):
    out = tmp_path / "q.pte"
    out.write_bytes(b"keep me")
    res = invoke("quant", outlier_ckpt, "--calib-synthetic", "1", "--input-size", "64",
                 "--export", str(out))
    assert res.exit_code == 2 and "already exists" in res.stderr, res.output
    assert out.read_bytes() == b"keep me" and os.listdir(tmp_path) == ["q.pte"]


def test_missing_executorch_says_what_to_install(outlier_ckpt, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "executorch", None)  # import now raises ImportError
    out = tmp_path / "q.pte"
    res = invoke("quant", outlier_ckpt, "--export", str(out))
    assert res.exit_code == 2, res.output
    assert "pip install 'mobileone-cli[executorch]'" in res.stderr and not out.exists()
