"""``mobileone eval``: accuracy on labelled folders of real image files, train vs deploy vs an
exported file, each number checked against a computation made here (a head whose predictions
are known by construction, or an independent forward pass on independently preprocessed images).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.specs import get_arch
from mobileone_cli.io.configfile import load_config
from mobileone_cli.arch.layouts import remap

from .imaging import class_tree, pattern, reference_file, write_image

pytest.importorskip("PIL")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ("--resize", "37", "--crop", "32")  # small images keep the forward passes cheap
PIPE = dict(resize=37, crop=(32, 32))
SIZES = [(61, 47), (40, 52), (37, 37), (90, 33), (45, 80)]


def loads(text: str):
    def refuse(const):
        raise ValueError(f"non-standard JSON constant {const}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def s0():
    """One calibrated s0 backbone for the whole module (calibration is the slow part); each
    test gives it its own head."""
    return backbone_of(get_arch("s0"), seed=2)


def backbone_of(spec, seed=3):
    sd = random_state_dict(spec.with_classes(0), form="train", seed=seed)
    return {k: v for k, v in sd.items() if not k.startswith("linear.")}


def make_ckpt(path, spec, backbone, *, seed=0, head=None, layout="apple"):
    """A train checkpoint of ``spec`` (``backbone`` + a random head, or ``head``) in ``layout``;
    returns its Apple-layout state dict."""
    sd = dict(backbone)
    if spec.has_head:
        g = torch.Generator().manual_seed(seed)
        sd["linear.weight"], sd["linear.bias"] = head if head is not None else (
            torch.randn(spec.num_classes, spec.head_channels, generator=g) / 32,
            torch.randn(spec.num_classes, generator=g))
    save_checkpoint(str(path), remap(sd, spec, "apple", layout, "train"), force=True)
    return sd


def constant_head(spec, bias):
    return torch.zeros(spec.num_classes, spec.head_channels), torch.tensor(bias)


def forward(sd, spec, paths, deploy=False):
    """Logits of our MobileOne (eval mode) on images preprocessed by the test's own pipeline."""
    model = MobileOne(spec, deploy=deploy)
    model.load_state_dict(sd)
    model.eval()
    x = torch.stack([torch.from_numpy(reference_file(p, **PIPE)) for p in paths])
    with torch.no_grad():
        return model(x)


def scores(logits, labels, k=5):
    labels = torch.tensor(labels)
    top = logits.topk(k, dim=1).indices
    return (float((top[:, 0] == labels).double().mean()),
            float((top == labels[:, None]).any(1).double().mean()))


def model_entry(rep, role):
    return next(m for m in rep["models"] if m["role"] == role)


# ---------------------------------------------------------------- numbers known in advance


def test_head_decides_every_prediction_by_construction(s0, tmp_path, run_cli):
    """Zero head weights: every image is predicted by the bias ranking, whatever the backbone
    does, so top-1/top-5 and per-class accuracy follow from the folder counts alone."""
    per_class = [3, 2, 4, 1, 2, 3]
    class_tree(str(tmp_path / "data"), per_class, SIZES)
    spec = get_arch("s0", 6)
    bias = [0.5, 3.0, 1.0, 2.0, -1.0, 0.0]  # ranking 1, 3, 2, 0, 5 | 4 last
    make_ckpt(tmp_path / "m.pth", spec, s0, seed=1, head=constant_head(spec, bias))
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--json")
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    n = sum(per_class)
    assert rep["data"]["evaluated"] == n and rep["data"]["unreadable"] == 0
    assert [m["role"] for m in rep["models"]] == ["train", "deploy"]
    for m in rep["models"]:
        assert m["top1"] == pytest.approx(per_class[1] / n, abs=1e-15)
        assert m["top5"] == pytest.approx((n - per_class[4]) / n, abs=1e-15)
        assert [(c["class"], c["images"], c["top1"], c["top5"]) for c in m["per_class"]] == [
            (c, per_class[c], 1.0 if c == 1 else 0.0, 0.0 if c == 4 else 1.0)
            for c in range(6)]
    fused = model_entry(rep, "deploy")["vs_reference"]
    assert fused["top1_agreement"] == 1.0 and fused["disagreements"] == []
    assert fused["max_abs_diff"] == 0.0  # the logits are the bias, exactly
    assert rep["preprocessing"]["resize"] == 37 and rep["preprocessing"]["crop"] == [32, 32]


def test_quiet_and_80_columns(s0, tmp_path, run_cli):
    """-q prints one line whose numbers are the report's; the tables fit 80 columns."""
    per_class = [3, 2, 4, 1, 2, 3]
    class_tree(str(tmp_path / "data"), per_class, SIZES)
    spec = get_arch("s0", 6)
    bias = [0.5, 3.0, 1.0, 2.0, -1.0, 0.0]
    make_ckpt(tmp_path / "m.pth", spec, s0, seed=1, head=constant_head(spec, bias))
    res = run_cli("-q", "eval", tmp_path / "m.pth", tmp_path / "data", *SMALL)
    assert res.exit_code == 0, res.output
    n = sum(per_class)
    top1, top5 = f"{100 * per_class[1] / n:.2f}%", f"{100 * (n - per_class[4]) / n:.2f}%"
    assert res.stdout.splitlines() == [
        f"{n} images: train top-1 {top1}, top-5 {top5}; deploy top-1 {top1}, top-5 {top5}, "
        f"agrees 100.00%, rel 0.00e+00"]
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL)
    assert res.exit_code == 0 and max(map(len, res.stdout.splitlines())) <= 80, res.stdout


def test_accuracy_equals_an_independent_forward(s0, tmp_path, run_cli):
    per_class = [3] * 8
    tree = class_tree(str(tmp_path / "data"), per_class, SIZES)
    spec = get_arch("s0", 8)
    sd = make_ckpt(tmp_path / "m.pth", spec, s0, seed=2)
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--batch", "5",
                  "--json")
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    names, labels = zip(*tree["items"])
    logits = forward(sd, spec, [str(tmp_path / "data" / n) for n in names])
    top1, top5 = scores(logits, labels)
    assert 0 < top1 < 1 and 0 < top5 < 1  # the numbers are informative here
    for m in rep["models"]:
        assert m["top1"] == pytest.approx(top1, abs=1e-15)
        assert m["top5"] == pytest.approx(top5, abs=1e-15)
    hits = (logits.argmax(1) == torch.tensor(labels)).tolist()
    per = model_entry(rep, "train")["per_class"]
    assert [c["top1"] for c in per] == [sum(hits[3 * c:3 * c + 3]) / 3 for c in range(8)]
    fused = model_entry(rep, "deploy")["vs_reference"]
    assert fused["top1_agreement"] == 1.0
    scale = float(logits.abs().max())
    assert fused["scale"] == pytest.approx(scale, rel=1e-5)
    assert fused["max_abs_diff"] <= 1e-4 * scale


def test_labels_file_and_classes_file(s0, tmp_path, run_cli):
    """The same images as a flat folder with a labels list (indices, or ids mapped by a
    classes file in a non-sorted order) score what the labels say."""
    spec = get_arch("s0", 8)
    sd = make_ckpt(tmp_path / "m.pth", spec, s0, seed=3)
    data = tmp_path / "flat"
    labels = [(i * 3) % 8 for i in range(16)]
    names = []
    for i, lab in enumerate(labels):
        w, h = SIZES[i % len(SIZES)]
        names.append(f"ILSVRC_val_{i:04d}.{'JPEG' if i % 2 else 'png'}")
        write_image(str(data / names[-1]), pattern(w, h, salt=i),
                    **({"format": "JPEG", "quality": 90} if i % 2 else {}))
    ids = [f"n{(c * 5) % 8:08d}" for c in range(8)]  # class c is called ids[c]
    (tmp_path / "val.txt").write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels)))
    (tmp_path / "val_ids.txt").write_text(
        "# comment\n" + "".join(f"{n}\t{ids[lab]}\n" for n, lab in zip(names, labels)))
    (tmp_path / "synsets.txt").write_text("".join(f"{i} the class {c}\n"
                                                  for c, i in enumerate(ids)))
    logits = forward(sd, spec, [str(data / n) for n in names])
    top1, top5 = scores(logits, labels)
    for extra in (("--labels", tmp_path / "val.txt"),
                  ("--labels", tmp_path / "val_ids.txt", "--classes", tmp_path / "synsets.txt")):
        res = run_cli("eval", tmp_path / "m.pth", data, *SMALL, *extra, "--json")
        assert res.exit_code == 0, res.output
        rep = loads(res.stdout)
        assert rep["data"]["kind"] == "labels file" and rep["data"]["evaluated"] == 16
        assert model_entry(rep, "train")["top1"] == pytest.approx(top1, abs=1e-15)
        assert model_entry(rep, "train")["top5"] == pytest.approx(top5, abs=1e-15)
    per = model_entry(rep, "train")["per_class"]
    assert {c["name"] for c in per} == {ids[lab] for lab in labels}


def test_limit_takes_images_from_every_class(s0, tmp_path, run_cli):
    class_tree(str(tmp_path / "data"), [5, 5, 5, 5], SIZES)
    spec = get_arch("s0", 4)
    make_ckpt(tmp_path / "m.pth", spec, s0, seed=4)
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--limit", "4",
                  "--json")
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    assert rep["data"]["selected"] == 4 and rep["data"]["images_listed"] == 20
    assert [c["images"] for c in model_entry(rep, "train")["per_class"]] == [1, 1, 1, 1]


def test_unreadable_images_are_counted_not_fatal(s0, tmp_path, run_cli):
    class_tree(str(tmp_path / "data"), [2, 2], SIZES)
    good = (tmp_path / "data" / "c0" / "img01.jpg").read_bytes()
    (tmp_path / "data" / "c0" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "data" / "c1" / "empty.png").write_bytes(b"")
    (tmp_path / "data" / "c1" / "text.png").write_bytes(b"not an image at all")
    spec = get_arch("s0", 2)
    make_ckpt(tmp_path / "m.pth", spec, s0, seed=5, head=constant_head(spec, [1.0, 0.0]))
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--json")
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    d = rep["data"]
    assert (d["images_listed"], d["evaluated"], d["unreadable"]) == (7, 4, 3)
    assert sorted(u["image"] for u in d["unreadable_files"]) == [
        os.path.join("c0", "cut.jpg"), os.path.join("c1", "empty.png"),
        os.path.join("c1", "text.png")]
    assert all("cannot read image" in u["reason"] for u in d["unreadable_files"])
    assert model_entry(rep, "train")["top1"] == 0.5  # the 4 readable images, 2 of class 0
    text = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL)
    assert text.exit_code == 0 and "3 unreadable" in text.stdout and "cut.jpg" in text.stdout


# ---------------------------------------------------------------- deploy files and artifacts


def test_tampered_deploy_block_lowers_agreement_and_names_the_images(s0, tmp_path, run_cli):
    tree = class_tree(str(tmp_path / "data"), [3] * 8, SIZES)
    spec = get_arch("s0", 8)
    sd = make_ckpt(tmp_path / "m.pth", spec, s0, seed=6)
    assert run_cli("convert", tmp_path / "m.pth", tmp_path / "d.pth",
                   "--no-verify").exit_code == 0
    deploy = torch.load(tmp_path / "d.pth", weights_only=True)
    g = torch.Generator().manual_seed(0)
    w = deploy["stage4.0.reparam_conv.weight"]
    deploy["stage4.0.reparam_conv.weight"] = w + 2 * w.std() * torch.randn(w.shape, generator=g)
    save_checkpoint(str(tmp_path / "bad.pth"), deploy, force=True)

    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--deploy",
                  tmp_path / "bad.pth", "--json")
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    names, labels = zip(*tree["items"])
    paths = [str(tmp_path / "data" / n) for n in names]
    ref = forward(sd, spec, paths).argmax(1)
    out = forward(deploy, spec, paths, deploy=True).argmax(1)
    expected = {n for n, r, o in zip(names, ref.tolist(), out.tolist()) if r != o}
    assert expected and len(expected) < len(names)
    vs = model_entry(rep, "deploy")["vs_reference"]
    assert vs["top1_agreement"] == pytest.approx(1 - len(expected) / len(names), abs=1e-15)
    assert vs["disagreeing"] == len(expected)
    assert {d["image"] for d in vs["disagreements"]} == expected
    for d in vs["disagreements"]:
        i = names.index(d["image"])
        assert (d["label"], d["reference_top1"], d["top1"]) == (labels[i], int(ref[i]),
                                                                  int(out[i]))
    assert model_entry(rep, "deploy")["name"] == "bad.pth"
    text = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--deploy",
                   tmp_path / "bad.pth")
    assert "top-1 differs" in text.stdout and sorted(expected)[0] in text.stdout


@pytest.mark.slow  # the export itself takes most of it
def test_exported_onnx_in_the_same_pass(tmp_path, run_cli):
    """The custom network (its export costs less than s0's; eval runs any file alike)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    tree = class_tree(str(tmp_path / "data"), [2] * 8, SIZES)
    config = os.path.join(ROOT, "examples", "custom_3stage.yaml")
    spec = load_config(config)
    sd = make_ckpt(tmp_path / "m.pth", spec, backbone_of(spec, seed=2), seed=7)
    # a fixed batch of 3 and a fixed size: eval feeds it in padded chunks of 3
    res = run_cli("export", tmp_path / "m.pth", tmp_path / "m.onnx", "--input-size", "32",
                  "--batch", "3", "--fixed-size", "--config", config)
    assert res.exit_code == 0, res.output
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--batch", "8",
                  "--deploy", tmp_path / "m.onnx", "--json", "--config", config)
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    assert [m["role"] for m in rep["models"]] == ["train", "deploy", "exported"]
    onnx = model_entry(rep, "exported")
    assert onnx["model"]["runtime"] == "onnxruntime" and onnx["name"] == "m.onnx"
    names, labels = zip(*tree["items"])
    top1, top5 = scores(forward(sd, spec, [str(tmp_path / "data" / n) for n in names]), labels)
    assert onnx["top1"] == pytest.approx(top1, abs=1e-15)
    assert onnx["top5"] == pytest.approx(top5, abs=1e-15)
    assert onnx["vs_reference"]["top1_agreement"] == 1.0
    assert onnx["vs_reference"]["images"] == 16
    assert onnx["vs_reference"]["max_rel_diff"] < 1e-4
    # the graph's fixed size must match the crop
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", "--deploy", tmp_path / "m.onnx",
                  "--config", config)
    assert res.exit_code == 2 and "--crop 32x32" in res.stderr


def test_headless_compares_features_only(s0, tmp_path, run_cli):
    data = tmp_path / "flat"
    for i in range(5):
        write_image(str(data / f"{i}.png"), pattern(*SIZES[i], salt=i))
    spec = get_arch("s0", 0)
    sd = make_ckpt(tmp_path / "h.pth", spec, s0, seed=8)
    res = run_cli("eval", tmp_path / "h.pth", data, *SMALL, "--json")
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    assert rep["compared"] == "feature map" and rep["data"]["kind"] == "flat folder"
    assert all(m["top1"] is None and m["per_class"] is None for m in rep["models"])
    vs = model_entry(rep, "deploy")["vs_reference"]
    assert vs["top1_agreement"] is None and vs["images"] == 5
    feats = forward(sd, spec, [str(data / f"{i}.png") for i in range(5)])
    assert vs["scale"] == pytest.approx(float(feats.abs().max()), rel=1e-5)
    assert vs["max_rel_diff"] < 1e-4 and vs["min_cosine"] > 0.9999
    assert "headless" in " ".join(rep["notes"])


@pytest.mark.parametrize("layout", ["mmpretrain", "timm"])
def test_other_layouts(s0, layout, tmp_path, run_cli):
    class_tree(str(tmp_path / "data"), [2, 3, 1], SIZES)
    spec = get_arch("s0", 3)
    make_ckpt(tmp_path / "m.pth", spec, s0, seed=9, layout=layout,
              head=constant_head(spec, [0.0, 1.0, 0.5]))
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--json")
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    assert model_entry(rep, "train")["model"]["layout"] == layout
    assert [m["top1"] for m in rep["models"]] == [0.5, 0.5]  # class 1: 3 of 6


def test_config_with_custom_classes(tmp_path, run_cli):
    config = os.path.join(ROOT, "examples", "custom_3stage.yaml")
    spec = load_config(config)
    assert spec.num_classes == 10
    per_class = [1] * 10
    class_tree(str(tmp_path / "data"), per_class, SIZES)
    make_ckpt(tmp_path / "m.pth", spec, backbone_of(spec), seed=10,
              head=constant_head(spec, [float(c % 4) for c in range(10)]))
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL, "--config", config,
                  "--json")
    assert res.exit_code == 0, res.output
    rep = loads(res.stdout)
    assert rep["num_classes"] == 10
    # bias c % 4 puts class 3 first (ties at 3: classes 3 and 7; torch picks one of them)
    for m in rep["models"]:
        assert m["top1"] == pytest.approx(0.1, abs=1e-15)


# ---------------------------------------------------------------- refusals, progress, memory


@pytest.mark.parametrize("case,message", [
    ("flat", "--labels"), ("too_many_folders", "--classes"), ("bad_label", "val.txt:2"),
    ("crop", "does not fit"), ("not_dir", "not a directory"), ("deploy_is_train", "train-form")])
def test_refusals(s0, case, message, tmp_path, run_cli):
    spec = get_arch("s0", 2)
    make_ckpt(tmp_path / "m.pth", spec, s0, seed=11)
    data = tmp_path / "data"
    args = [tmp_path / "m.pth", data, *SMALL]
    if case == "flat":
        write_image(str(data / "a.png"), pattern(40, 40))
    elif case == "too_many_folders":
        class_tree(str(data), [1, 1, 1], SIZES)
    elif case == "bad_label":
        write_image(str(data / "a.png"), pattern(40, 40))
        (tmp_path / "val.txt").write_text("a.png 1\na.png 2\n")
        args += ["--labels", tmp_path / "val.txt"]
    elif case == "crop":
        class_tree(str(data), [1, 1], SIZES)
        args = [tmp_path / "m.pth", data, "--resize", "30", "--crop", "32"]
    elif case == "not_dir":
        args = [tmp_path / "m.pth", tmp_path / "m.pth"]
    else:
        class_tree(str(data), [1, 1], SIZES)
        args += ["--deploy", tmp_path / "m.pth"]
    res = run_cli("eval", *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.output


def test_without_pillow_says_what_to_install(s0, tmp_path, run_cli, monkeypatch):
    class_tree(str(tmp_path / "data"), [1, 1], SIZES)
    make_ckpt(tmp_path / "m.pth", get_arch("s0", 2), s0, seed=12)
    monkeypatch.setitem(sys.modules, "PIL", None)
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", *SMALL)
    assert res.exit_code == 2 and "Pillow" in res.stderr and "pip install" in res.stderr


def test_progress_is_reported_per_batch(s0, tmp_path):
    from mobileone_cli.data.pipeline import make_preprocessing
    from mobileone_cli.jobs.eval import evaluate_files

    class_tree(str(tmp_path / "data"), [4, 3], SIZES)
    make_ckpt(tmp_path / "m.pth", get_arch("s0", 2), s0, seed=13)
    calls = []
    report = evaluate_files(str(tmp_path / "m.pth"), str(tmp_path / "data"), batch=3,
                            preprocessing=make_preprocessing(resize=37, crop=32),
                            progress=lambda done, total: calls.append((done, total)))
    assert report.images == 7 and report.images_per_second > 0
    assert calls[0] == (0, 7) and calls[-1] == (7, 7)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and (3, 7) in calls


MEASURE = """
import os, resource, sys
from mobileone_cli.data.pipeline import make_preprocessing
from mobileone_cli.jobs.eval import evaluate_files
r = evaluate_files(sys.argv[1], sys.argv[2], batch=8, workers=2,
                   preprocessing=make_preprocessing(resize=146, crop=128))
assert r.images == int(sys.argv[3]) and r.unreadable == 0, (r.images, r.unreadable)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Peak RSS of a whole evaluation (own process) at 40 and at 200 images: equal within a
    few MB, while keeping the extra 160 preprocessed images alone would take 31 MB."""
    spec = load_config(os.path.join(ROOT, "examples", "custom_3stage.yaml"))
    make_ckpt(tmp_path / "m.pth", spec, backbone_of(spec), seed=14)
    for n, folder in ((40, "small"), (200, "large")):
        class_tree(str(tmp_path / folder), [n // 10] * 10, [(320, 240), (240, 320)])
    peaks = {}
    for n, folder in ((40, "small"), (200, "large")):
        out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "m.pth"),
                              str(tmp_path / folder), str(n)], capture_output=True, text=True,
                             timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[n] = int(out.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux
    held = 160 * 3 * 128 * 128 * 4
    assert peaks[200] - peaks[40] < held / 4, peaks


def test_running_totals_equal_a_one_shot_computation():
    """Batches folded one by one give the numbers computed at once over all images; an image
    with NaN is a disagreement and makes the difference infinite."""
    import math

    from mobileone_cli.check.tally import Accuracy, Agreement

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(23, 7, generator=g, dtype=torch.float64)
    out = ref + 0.3 * torch.randn(23, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (23,), generator=g)
    names = [f"i{k}" for k in range(23)]
    acc, agr = Accuracy(7), Agreement(logits=True)
    for s in range(0, 23, 5):
        sl = slice(s, s + 5)
        agr.update(ref[sl], out[sl], names[sl], labels[sl])
        acc.update(out[sl], labels[sl])
    assert acc.top1 == float((out.argmax(1) == labels).double().mean())
    in5 = [int(labels[k]) in out[k].argsort(descending=True)[:5].tolist() for k in range(23)]
    assert acc.topk == sum(in5) / 23
    differ = [names[k] for k in range(23) if ref[k].argmax() != out[k].argmax()]
    assert [d.name for d in agr.disagreements] == differ and agr.disagreeing == len(differ)
    assert agr.agreement == 1 - len(differ) / 23
    assert agr.max_abs == float((ref - out).abs().max()) and agr.scale == float(ref.abs().max())
    cos = torch.nn.functional.cosine_similarity(ref, out, dim=1)
    assert agr.min_cosine == pytest.approx(float(cos.min()), rel=1e-12)
    bad = out[:2].clone()
    bad[1, 3] = float("nan")
    agr.update(ref[:2], bad, ["a", "b"], labels[:2])
    assert math.isinf(agr.max_abs) and agr.non_finite == 1 and agr.disagreements[-1].name == "b"
