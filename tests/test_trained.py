"""The trained networks shipped in mobileone_cli/assets/digits: files, accuracy, preprocessing."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mobileone_cli.assets import digits as assets
from mobileone_cli.data.digits import heldout_images, heldout_pixels, to_network_input
from mobileone_cli.models.trained import trained_model, trained_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def heldout():
    return heldout_images()


def test_assets_are_small_and_attributed():
    total = sum(os.path.getsize(os.path.join(assets.FOLDER, f)) for f in os.listdir(assets.FOLDER)
                if not f.startswith("__"))
    assert total < 1_000_000, total
    text = assets.attribution()
    assert "CC BY 4.0" in text and "Alpaydin" in text
    for name in assets.NETWORKS:
        assert os.path.exists(assets.checkpoint_path(name))
        assert assets.arch(name).name == name
    assert assets.network_name("s4") == "digits_s4"
    with pytest.raises(ValueError):
        assets.network_name("s9")


def test_checkpoints_are_apple_train_form_with_real_statistics():
    from mobileone_cli.arch.layouts import schema

    for name in assets.NETWORKS:
        sd = trained_state_dict(name)
        expected = {e.key for e in schema(assets.arch(name), "apple", "train")}
        assert set(sd) == expected
        assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
        # statistics measured on data: not PyTorch's initial mean 0 / var 1
        var = sd["stage1.0.rbr_conv.0.bn.running_var"]
        assert not torch.allclose(var, torch.ones_like(var))
    arch0, arch4 = assets.arch("s0"), assets.arch("s4")
    assert set(arch0.conv_branches) == {4} and not any(arch0.se_blocks)
    assert any(b.has_se for b in arch4.block_specs())


def test_heldout_split_is_every_fifth_image():
    pixels, labels = heldout_pixels()
    with np.load(assets.HELDOUT, allow_pickle=False) as f:
        index = f["index"]
    assert np.array_equal(index, np.arange(0, 1797, assets.HELDOUT_EVERY))
    assert pixels.shape == (360, 8, 8) and pixels.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10))
    sklearn = pytest.importorskip("sklearn.datasets")
    data = sklearn.load_digits()
    assert np.array_equal(pixels, np.rint(data.images[index] * 255 / 16).astype(np.uint8))
    assert np.array_equal(labels, data.target[index])


def test_network_input_is_nearest_upsampling_and_normalization():
    pixels, _ = heldout_pixels()
    x = to_network_input(pixels[:3])
    assert x.shape == (3, 3, assets.SIZE, assets.SIZE) and x.dtype == torch.float32
    p = pixels[1].astype(np.float64)
    k = assets.SCALE
    for i, j in ((0, 0), (5, 17), (assets.SIZE - 1, assets.SIZE - 1)):
        want = (p[i // k, j // k] - 127.5) / 127.5
        assert x[1, 0, i, j].item() == pytest.approx(want, abs=1e-7)
        assert x[1, 0, i, j] == x[1, 2, i, j]


def test_eval_options_on_pngs_give_the_same_tensors(tmp_path):
    """`mobileone eval` with EVAL_OPTIONS on 8x8 PNGs sees exactly what the networks trained on."""
    Image = pytest.importorskip("PIL.Image")
    from mobileone_cli.data.pipeline import load_tensor, make_preprocessing

    opts = dict(zip(assets.EVAL_OPTIONS[::2], assets.EVAL_OPTIONS[1::2]))
    prep = make_preprocessing(int(opts["--resize"]), opts["--crop"], opts["--interpolation"],
                              opts["--mean"], opts["--std"])
    pixels, _ = heldout_pixels()
    want = to_network_input(pixels[:8])
    for i in range(8):
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(pixels[i], "L").save(path)
        assert torch.equal(load_tensor(path, prep), want[i])


@pytest.mark.parametrize("name", assets.NETWORKS)
def test_heldout_top1_is_the_recorded_one(name, heldout):
    x, y = heldout
    record = assets.training_record(name)
    model = trained_model(name)
    with torch.no_grad():
        logits = model(x)
        logits64 = trained_model(name).double()(x.double())
    correct = int((logits.argmax(1) == y).sum())
    assert correct == record["heldout_correct"]
    assert correct / len(y) >= 0.95
    # float64 evaluation of the same weights: the float32 top-1 is not an accident of rounding
    assert int((logits64.argmax(1) == y).sum()) == correct


@pytest.mark.parametrize("name", assets.NETWORKS)
def test_deploy_form_keeps_the_accuracy(name, heldout):
    x, y = heldout
    with torch.no_grad():
        ref = trained_model(name).double()(x.double())
        deploy = trained_model(name, "deploy")(x)
    rel = float((deploy.double() - ref).abs().max() / ref.abs().max())
    assert rel < 1e-5, rel
    assert int((deploy.argmax(1) != ref.argmax(1)).sum()) <= 1


QUICK_EPOCHS = 3  # the 2 warm-up epochs and the first of the cosine schedule


@pytest.mark.slow
def test_training_script_reproduces_the_recorded_run(tmp_path, request):
    """tools/train_digits.py against the run that made the shipped digits_s4: the mean training
    loss of each of its first epochs (the data, its shifts, the network, its initialisation,
    the optimiser and the schedule all decide them) within 1e-4 of the record (another CPU sums
    in another order), then BatchNorm calibration, evaluation and the files.  With
    --full-retrain the whole schedule (~25 s on one core): every epoch's loss and the held-out
    top-1 (on the machine that recorded it, the very bytes that ship)."""
    pytest.importorskip("sklearn")
    name = "digits_s4"
    full = request.config.getoption("--full-retrain")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_digits.py"),
                          "--only", name, "--out", str(tmp_path),
                          *([] if full else ["--stop-after", str(QUICK_EPOCHS)])],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    import json

    with open(tmp_path / "training.json", encoding="utf-8") as fh:
        got = json.load(fh)
    with open(os.path.join(assets.FOLDER, "training.json"), encoding="utf-8") as fh:
        shipped = json.load(fh)
    losses, recorded = got["loss_per_epoch"][name], shipped["loss_per_epoch"][name]
    assert len(losses) == (len(recorded) if full else QUICK_EPOCHS)
    assert losses == pytest.approx(recorded[:len(losses)], rel=1e-4)
    assert (tmp_path / f"{name}_unfused.pth.tar").is_file()
    if full:
        top1 = got["networks"][name]["heldout_top1"]
        assert abs(top1 - assets.training_record(name)["heldout_top1"]) <= 0.005


def test_public_api_names():
    import mobileone_cli as mo

    assert mo.trained_model is trained_model and mo.heldout_images is heldout_images
    assert mo.trained_state_dict is trained_state_dict
