"""What the tool reports on a trained network: the shipped digits networks on their held-out images.

The reference numbers are computed here independently: the train-form model in eval mode on the
tensors of :func:`heldout_images` (tests/test_trained.py ties them to the recorded accuracy and
to float64).  Exports come from one demo run shared by the module (slow: ~30 s of exporting).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from mobileone_cli.assets import digits as assets
from mobileone_cli.data.digits import heldout_images, write_heldout_pngs
from mobileone_cli.models.trained import trained_model, trained_state_dict

pytest.importorskip("PIL")
EVAL = list(assets.EVAL_OPTIONS)


@pytest.fixture(scope="module")
def heldout():
    x, y = heldout_images()
    with torch.no_grad():
        top1 = {n: trained_model(n)(x).argmax(1) for n in assets.NETWORKS}
    return x, y, top1


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits") / "heldout"
    write_heldout_pngs(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`mobileone demo --json` once: its report and its folder."""
    from tests.conftest import invoke

    folder = str(tmp_path_factory.mktemp("demo") / "mobileone-demo")
    res = invoke("demo", "--dir", folder, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), folder


# --------------------------------------------------------------------------- demo and eval

@pytest.mark.slow
def test_demo_reports_real_heldout_accuracy_for_every_model(demo, heldout):
    report, folder = demo
    x, y, top1 = heldout
    want = int((top1["digits_s0"] == y).sum())
    rows = {r["name"]: r for r in report["heldout"]}
    assert report["heldout_images"] == len(y) == 360
    assert round(rows["train"]["top1"] * len(y)) == want
    from mobileone_cli.runtimes import TARGETS, runtime_module

    for ext, t in TARGETS.items():
        if t.executes_on != "any":
            continue
        try:
            runtime_module(t.module).require()
        except Exception:
            assert ext in [m["extension"] for m in report["not_installed"]]
            continue
        assert ext in rows, f"{ext} installed but not in the demo"
        assert os.path.exists(os.path.join(folder, f"digits_s0{ext}"))
    for name, r in rows.items():
        assert r["top1"] >= 0.95, (name, r)
        if name != "train":  # every model is scored against the train model
            assert r["agreement"] >= 1 - 1 / len(y), (name, r)
    assert {"int8 per-channel", "int8 per-tensor"} <= set(rows)
    # the shown files are really there, the PNGs included
    for path in report["files"]:
        assert os.path.exists(path), path
    assert sum(len(fs) for _, _, fs in os.walk(report["heldout_pngs"])) == len(y)


def test_demo_refuses_to_overwrite_its_files(tmp_path, run_cli):
    """A folder an earlier demo wrote into (its train and deploy files there): the demo refuses
    before any work, says --force, and leaves every byte and no new file.  The refusal is
    decided on the paths alone, so the earlier run's files need not be a real demo's."""
    folder = tmp_path / "mobileone-demo"
    folder.mkdir()
    before = {"digits_s0_unfused.pth.tar": b"an earlier train file",
              "digits_s0.pth": b"an earlier deploy file"}
    for name, data in before.items():
        (folder / name).write_bytes(data)
    res = run_cli("demo", "--dir", folder)
    assert res.exit_code == 2 and "--force" in res.stderr, res.output
    assert "not overwriting" in res.stderr and "1 more" in res.stderr, res.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
def test_eval_of_train_deploy_and_every_artifact_agrees(demo, heldout, run_cli):
    """`mobileone eval` on the PNGs: each model's top-1 equals the train model's computed here,
    or differs by at most one image, and then the report names that image."""
    report, folder = demo
    x, y, top1 = heldout
    want = int((top1["digits_s0"] == y).sum()) / len(y)
    files = [report["convert"]["dst"]] + [e["dst"] for e in report["exports"]]
    args = ["eval", report["files"][0], report["heldout_pngs"], "--config",
            os.path.join(folder, "digits_s0.yaml"), "--json", "--workers", "0"] + EVAL
    for f in files:
        args += ["--deploy", f]
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    models = json.loads(res.stdout)["models"]
    assert len(models) == 1 + len(files)
    assert models[0]["top1"] == pytest.approx(want, abs=1e-12)  # same pixels as the loader
    for m in models[1:]:
        vs = m["vs_reference"]
        assert abs(m["top1"] - want) <= 1 / len(y) + 1e-12, m["name"]
        assert vs["disagreeing"] <= 1, m["name"]
        assert len(vs["disagreements"]) == vs["disagreeing"]
        assert vs["max_rel_diff"] < 1e-4, m["name"]


# --------------------------------------------------------------------------- quant

def _quant(path, pngs, **kw):
    from mobileone_cli.data.pipeline import make_preprocessing
    from mobileone_cli.jobs.quant import QuantOptions, quantize_file

    opts = dict(zip(EVAL[::2], EVAL[1::2]))
    prep = make_preprocessing(int(opts["--resize"]), opts["--crop"], opts["--interpolation"],
                              opts["--mean"], opts["--std"])
    return quantize_file(path, QuantOptions(arch=assets.arch("s0"), calib=pngs,
                                            preprocessing=prep, input_size=(64, 64), limit=120,
                                            batch=40, workers=0, **kw))


@pytest.fixture(scope="module")
def quant_clean(pngs):
    return _quant(assets.checkpoint_path("s0"), pngs)


def test_quant_flags_nothing_on_the_trained_network(quant_clean):
    d = quant_clean.deploy
    assert d.flagged == []
    assert quant_clean.calibration.images == 120 and quant_clean.calibration.labelled
    # per-channel int8 on held-out images: measured 0 images lost (98.89% / 98.89% on 360);
    # allow 2 of 120 (~1.7 points) for other CPUs' rounding
    fp32, int8 = d.accuracy_fp32[0], d.accuracy_int8[0]
    assert fp32 >= 0.95 and abs(fp32 - int8) <= 2 / 120 + 1e-12
    assert d.top1_agreement >= 1 - 2 / 120
    # a trained network's blocks all keep at least 25 dB under int8 (measured: >= 33 dB)
    assert min(b.own_db for b in d.blocks) > 25


def test_quant_flags_an_injected_outlier_channel(pngs, tmp_path, quant_clean):
    """One output channel of stage2.1's pointwise branches scaled x100 (what a large BatchNorm
    gamma does to a real network): the two blocks the wide channel passes between (stage2.1
    writes it, stage2.2 reads it through one int8 activation scale) are flagged worst, and no
    block before it."""
    from mobileone_cli.io.write import save_checkpoint

    sd = trained_state_dict("s0")
    block = "stage2.1"
    for k in list(sd):
        if k.startswith(block + ".") and k.endswith("bn.weight") or \
                k.startswith(block + ".") and k.endswith("bn.bias"):
            sd[k] = sd[k].clone()
            sd[k][3] *= 100.0
    path = str(tmp_path / "outlier.pth.tar")
    save_checkpoint(path, sd)
    flagged = _quant(path, pngs).deploy.flagged
    assert set(flagged[:2]) == {block, "stage2.2"}, flagged
    order = [b.name for b in quant_clean.deploy.blocks]
    assert min(order.index(f) for f in flagged) == order.index(block)


# --------------------------------------------------------------------------- fp16 / bf16

@pytest.fixture(scope="module")
def halves():
    """The deploy weights as `convert --dtype` stores them: fused in float64, then rounded."""
    from mobileone_cli.fuse.fusion import fuse_state_dict

    fused = fuse_state_dict(trained_state_dict("s0"), assets.arch("s0"))
    return {name: {k: v.to(dtype) for k, v in fused.items()}
            for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16),
                                ("bf16", torch.bfloat16))}


@pytest.mark.parametrize("dtype,word", [("fp32", "equivalent"),
                                        ("fp16", "as close as float16 allows"),
                                        ("bf16", "as close as bfloat16 allows")])
def test_half_precision_files_pass_and_keep_the_top1(halves, heldout, dtype, word):
    from mobileone_cli.jobs.verify import verify_state_dicts

    x, y, top1 = heldout
    n = 48
    report = verify_state_dicts(trained_state_dict("s0"), halves[dtype], assets.arch("s0"),
                                images=x[:n])
    v = report.verdict
    assert v.passed
    summary = report.summary()
    assert summary.startswith(word), summary
    if dtype != "fp32":
        agree = round(v.decisive.output.top1 * n)
        assert f"top-1 agrees with the train model on {agree} of {n} checked images" in summary
        assert agree >= n - 1
    # independently: the half-precision deploy weights on all held-out images, in fp32
    from mobileone_cli.check.harness import load_model

    model = load_model(halves[dtype], assets.arch("s0"), "deploy", dtype=torch.float32)
    with torch.no_grad():
        pred = model(x).argmax(1)
    differ = int((pred != top1["digits_s0"]).sum())
    assert differ <= {"fp32": 0, "fp16": 1, "bf16": 2}[dtype], differ


def test_quant_command_reads_calibration_images_with_the_given_preprocessing(pngs, heldout,
                                                                              run_cli):
    """`quant --resize --interpolation --mean --std`: the PNGs become exactly the loader's
    tensors, so fp32 top-1 on them is the train model's computed here."""
    x, y, top1 = heldout
    n = 40
    res = run_cli("quant", assets.checkpoint_path("s0"), "--config", assets.config_path("s0"),
                  "--calib", pngs, "--limit", str(n), "--workers", "0", "--input-size", "64",
                  "--resize", "64", "--interpolation", "nearest", "--mean", "127.5,127.5,127.5",
                  "--std", "127.5,127.5,127.5", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert "Pillow nearest" in report["calibration"]["preprocessing"]
    from mobileone_cli.data.folders import spread

    order = sorted(range(len(y)), key=lambda i: (int(y[i]), i))  # class folders, then names
    chosen = [order[i] for i in spread(len(y), n)]  # the images --limit picks
    want = float((top1["digits_s0"][chosen] == y[chosen]).double().mean())
    fp32 = report["deploy"]["accuracy_fp32"]["top1"]
    assert fp32 == pytest.approx(want, abs=1e-12) and fp32 >= 0.9
