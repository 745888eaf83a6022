"""`mobileone verify`: yes or no, how close, and where two models part.

Every number the tool reports is checked against models and inputs built here, independently of
the verify code: our MobileOne in eval mode (itself checked against a functional forward in
test_model.py), inputs drawn from a fresh generator, float64 runs built by hand.  The verdict
rule itself, across variants and network kinds, is tested in test_verdict.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mobileone_cli.arch.specs import get_arch
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.arch.layouts import remap
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.check import harness as H
from mobileone_cli.check import verdict as J
from mobileone_cli.jobs import verify as V
from mobileone_cli.rules.tolerances import DEFAULT_RTOL as RTOL

from .conftest import first_quick, state_dict_of


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as a CI parser would."""
    def refuse(const):
        raise ValueError(f"non-standard JSON constant {const}")
    return json.loads(text, parse_constant=refuse)


def make_inputs(seed: int, batch: int, h: int, w: int = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w or h, generator=g, dtype=torch.float64).float()


def model_of(sd, spec, form="train", dtype=torch.float32, bn_eps=1e-5):
    with torch.device("meta"):  # no random init: every tensor comes from sd
        m = MobileOne(spec, deploy=(form == "deploy"), bn_eps=bn_eps)
    m.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True, assign=True)
    return m.to(dtype).eval()


@torch.no_grad()
def block_scales(sd, spec, x):
    """max |output| of every block (and the head) of the train model, by forward hooks."""
    model = model_of(sd, spec)
    scales, handles = {}, []
    names = [b.name for b in spec.block_specs()] + (["linear"] if spec.has_head else [])
    mods = dict(model.named_modules())
    for n in names:
        handles.append(mods[n].register_forward_hook(
            lambda m, i, o, n=n: scales.__setitem__(n, float(o.abs().max()))))
    model(x)
    for h in handles:
        h.remove()
    return scales


SEED = 31  # one network per variant serves every test that needs no particular one


def train_sd(arch="s1", seed=SEED):
    """A calibrated train state dict, made once per process (conftest.state_dict_of); the
    caller gets its own copy, free to change."""
    made = state_dict_of(arch, "train", "apple", seed, torch.float32, None)
    return {k: v.clone() for k, v in made.items()}


def save(path, sd):
    save_checkpoint(str(path), sd, force=True)
    return str(path)


# ---------------------------------------------------------------- honest conversions pass


# s0 at the size users check at; s1 (the narrowest k = 1 network) and s4 (the widest, with
# squeeze-excitation) at 64 px, where their last stage still sees 2x2 pixels (borders and padding
# everywhere) at a fifth of the work.  s2 and s3, s1's blocks at widths in between, are verified
# by every convert of tests/test_convert.py.
@pytest.mark.parametrize("arch,size", first_quick(("s0", 224), ("s1", 64), ("s4", 64)))
def test_verify_passes_on_our_conversion(arch, size, write_ckpt, run_cli, tmp_path):
    src = write_ckpt(arch, seed=SEED)
    dst = str(tmp_path / "deploy.pth")
    assert run_cli("convert", src, dst, "--no-verify").exit_code == 0
    res = run_cli("verify", src, dst, "--input-size", str(size), "--batch", "1", "--seed", "3",
                  "--json")
    assert res.exit_code == 0, res.output
    rep = strict_json(res.stdout)
    assert rep["passed"] and rep["first_bad_block"] is None

    # The reported difference is the one an independent eval-mode comparison finds.
    spec = get_arch(arch)
    train = model_of(torch.load(src, weights_only=True), spec)
    deploy = model_of(torch.load(dst, weights_only=True), spec, "deploy")
    x = make_inputs(3, 1, size)
    with torch.no_grad():
        ref, out = train(x), deploy(x)
    scale = float(ref.abs().max())
    got = rep["fp32"]["output"]
    assert got["scale"] == pytest.approx(scale, rel=1e-6)
    assert abs(got["max_abs"] - float((ref - out).abs().max())) <= 1e-6 * scale
    # An honest fp32 fusion differs by fp32 rounding, a few times the train model's own error
    # against float64 (independent measure of how much this network amplifies rounding).
    train64 = model_of({k: v.double() if v.is_floating_point() else v
                        for k, v in torch.load(src, weights_only=True).items()}, spec,
                       dtype=torch.float64)
    with torch.no_grad():
        noise = float((train64(x.double()) - ref.double()).abs().max()) / scale
    assert got["max_rel"] < max(RTOL / 10, 20 * noise), (got["max_rel"], noise)
    assert max(b["own_rel"] for b in rep["blocks"]) < RTOL  # every block within the rule
    assert [s["name"] for s in rep["stages"]] == ["stem", "stage1", "stage2", "stage3",
                                                  "stage4", "head"]


def test_single_file_is_fused_in_memory(write_ckpt, run_cli):
    src = write_ckpt("s4", seed=8)
    res = run_cli("verify", src, "--input-size", "32", "--batch", "2", "--json")
    assert res.exit_code == 0, res.output
    rep = strict_json(res.stdout)
    assert rep["deploy"]["source"].startswith("fused in memory")
    assert rep["passed"] and rep["fp32"]["output"]["max_rel"] < RTOL
    assert rep["conditioning"]["rounding_amplification"] is not None


def test_fp64_referee_tells_rounding_from_fusion():
    """An ill-conditioned s4 (random BN statistics) at 32 px amplifies fp32 rounding: with a tight
    fixed rtol the fp32 comparison is off while the float64 one is not, and the referee passes it."""
    spec = get_arch("s4")
    sd = random_state_dict(spec, seed=8, stats="random")
    deploy = fuse_state_dict(sd, spec)
    rep = V.verify_state_dicts(sd, deploy, spec, batch=2, input_size=32, rtol=1e-5)
    v = rep.verdict
    assert not v.fp32.passed and v.fp64 is not None and v.fp64.passed
    assert rep.passed and v.rounding_explained and "up to fp32 rounding" in rep.summary()
    assert v.train_fp32_vs_fp64.max_rel > 1e-5  # fp32 arithmetic alone moves the train model
    assert v.fp64.output.max_rel < 1e-5  # in float64 only the weights' fp32 rounding is left


# ---------------------------------------------------------------- broken deploy files fail


@pytest.mark.parametrize("arch,block", [("s0", "stage2.5"), ("s4", "stage3.19"),
                                        ("s1", "stage0"), ("s1", "linear")])
def test_one_perturbed_block_fails_and_is_named(arch, block):
    spec = get_arch(arch)
    sd = train_sd(arch)
    deploy = fuse_state_dict(sd, spec)
    x = make_inputs(0, 2, 32)
    delta = 1e-3 * block_scales(sd, spec, x)[block]  # 0.1% of the block's output range
    key = f"{block}.bias" if block == "linear" else f"{block}.reparam_conv.bias"
    deploy[key] = deploy[key] + delta

    rep = V.verify_state_dicts(sd, deploy, spec, seed=0, batch=2, input_size=32)
    v = rep.verdict
    assert not rep.passed and v.fp64 is not None  # decided by the float64 referee
    assert v.first_bad is not None and v.first_bad.name == block
    names = [b.name for b in v.fp64.blocks]
    before = v.fp64.blocks[:names.index(block)]
    assert all(b.own_rel < RTOL / 10 for b in before)
    bad = v.first_bad
    has_se = block != "linear" and {b.name: b for b in spec.block_specs()}[block].has_se
    if not has_se:  # nothing but a ReLU after the bias: the block's own error IS the shift
        assert abs(bad.own_abs - delta) <= 1e-5 * bad.scale
    assert bad.own_rel > RTOL


def test_perturbed_block_report_names_it(tmp_path, run_cli):
    spec = get_arch("s1")
    sd = train_sd()
    deploy = fuse_state_dict(sd, spec)
    delta = 1e-3 * block_scales(sd, spec, make_inputs(0, 2, 32))["stage2.7"]
    deploy["stage2.7.reparam_conv.bias"] += delta
    train_p, deploy_p = save(tmp_path / "t.pth", sd), save(tmp_path / "d.pth", deploy)
    res = run_cli("verify", train_p, deploy_p, "--input-size", "32", "--batch", "2")
    assert res.exit_code == 1
    assert "FAIL" in res.stdout and "first block that breaks: stage2.7" in res.stdout
    assert "BAD" in res.stdout  # the stage2 row of the per-stage table
    assert "error:" not in res.stderr  # the FAIL line says it once
    assert "Traceback" not in res.output


def test_wrong_eps_fails_and_the_right_eps_passes(tmp_path, run_cli):
    spec = get_arch("s1")
    sd = train_sd()
    train_p = save(tmp_path / "t.pth", sd)
    deploy_p = save(tmp_path / "d_eps1e-3.pth", fuse_state_dict(sd, spec, eps=1e-3))
    res = run_cli("verify", train_p, deploy_p, "--input-size", "32", "--batch", "2", "--json")
    assert res.exit_code == 1
    rep = strict_json(res.stdout)
    assert not rep["passed"] and rep["first_bad_block"]["name"] == "stage0"
    assert not any(s["within"] for s in rep["stages"] if s["name"] != "head")
    assert any("bn-eps" in n for n in rep["notes"])
    # The same file is right for a model trained with eps 1e-3.
    res = run_cli("verify", train_p, deploy_p, "--input-size", "32", "--batch", "2",
                  "--bn-eps", "1e-3")
    assert res.exit_code == 0, res.output


def test_deploy_of_another_checkpoint_fails_at_the_stem(write_ckpt, run_cli, tmp_path):
    train_p = write_ckpt("s1", seed=SEED, name="train31.pth")
    other = write_ckpt("s1", seed=52, name="train52.pth")
    deploy_p = str(tmp_path / "deploy52.pth")
    assert run_cli("convert", other, deploy_p, "--no-verify").exit_code == 0
    res = run_cli("verify", train_p, deploy_p, "--input-size", "32", "--batch", "2", "--json")
    assert res.exit_code == 1
    rep = strict_json(res.stdout)
    assert rep["first_bad_block"]["name"] == "stage0"
    assert rep["stages"][0]["name"] == "stem" and not rep["stages"][0]["within"]


def test_non_finite_deploy_fails_with_strict_json(tmp_path, run_cli):
    spec = get_arch("s1")
    sd = train_sd()
    deploy = fuse_state_dict(sd, spec)
    deploy["stage3.4.reparam_conv.weight"][0, 0, 0, 0] = float("nan")
    res = run_cli("verify", save(tmp_path / "t.pth", sd), save(tmp_path / "d.pth", deploy),
                  "--input-size", "32", "--batch", "2", "--json")
    assert res.exit_code == 1
    rep = strict_json(res.stdout)  # NaN/inf are reported as null, never as bare NaN
    assert rep["first_bad_block"]["name"] == "stage3.4"
    assert rep["fp32"]["output"]["finite"] is False


def test_non_finite_train_file_is_bad_input(tmp_path, run_cli):
    spec = get_arch("s1")
    sd = train_sd()
    deploy = fuse_state_dict(sd, spec)
    sd["stage2.2.rbr_skip.running_var"][3] = float("inf")
    res = run_cli("verify", save(tmp_path / "t.pth", sd), save(tmp_path / "d.pth", deploy))
    assert res.exit_code == 2 and "NaN/Inf" in res.stderr and res.stdout == ""


def test_half_precision_deploy_passes_with_defaults_and_a_wrong_one_fails(tmp_path, run_cli):
    """The tolerance follows the deploy file's dtype: honest fp16/bf16 rounding passes with the
    defaults, a block scaled by 1.05 in the same dtype still fails and is named."""
    spec = get_arch("s1")
    sd = train_sd()
    fused = fuse_state_dict(sd, spec, dtype=torch.float64)
    train_p = save(tmp_path / "t.pth", sd)
    args = ("--input-size", "64", "--batch", "2", "--json")
    for dtype in (torch.float16, torch.bfloat16):
        half = {k: v.to(dtype) for k, v in fused.items()}
        res = run_cli("verify", train_p, save(tmp_path / "d.pth", half), *args)
        assert res.exit_code == 0, res.output
        rep = strict_json(res.stdout)
        assert rep["deploy_dtype"] == str(dtype).replace("torch.", "")
        assert rep["fp32"]["output"]["max_rel"] > RTOL  # beyond fp32's tolerance: the rounding
        assert not any("bn-eps" in n for n in rep["notes"])
        half["stage2.5.reparam_conv.weight"] *= 1.05
        half["stage2.5.reparam_conv.bias"] *= 1.05
        res = run_cli("verify", train_p, save(tmp_path / "d.pth", half), *args)
        assert res.exit_code == 1, res.output
        assert strict_json(res.stdout)["first_bad_block"]["name"] == "stage2.5"


# -------------------------------- eval mode whatever the mode at save time (Apple issue 8)


def test_train_or_eval_mode_at_save_time_gives_the_same_answer(tmp_path, run_cli, monkeypatch):
    spec = get_arch("s1")
    model = model_of(train_sd(), spec)
    model.train()
    in_train = save(tmp_path / "saved_in_train_mode.pth", model.state_dict())
    model.eval()
    in_eval = save(tmp_path / "saved_in_eval_mode.pth", model.state_dict())
    deploy_p = save(tmp_path / "deploy.pth", fuse_state_dict(model.state_dict(), spec))

    # Sabotage: hand verify models in TRAIN mode and record the mode of every module it runs.
    seen = []
    real_load = H.load_model

    def load_in_train_mode(*args, **kwargs):
        m = real_load(*args, **kwargs).train()
        for mod in m.modules():
            mod.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
        return m

    monkeypatch.setattr(J, "load_model", load_in_train_mode)  # the models the verdict runs
    reports = []
    for path in (in_train, in_eval):
        res = run_cli("verify", path, deploy_p, "--input-size", "32", "--batch", "2",
                      "--reference", "fp64", "--json")
        assert res.exit_code == 0, res.output
        reports.append(strict_json(res.stdout))
    assert len(seen) > 100 and not any(seen)  # every forward ran in eval mode
    strip = [{k: v for k, v in r.items() if k not in ("train", "notes")} for r in reports]
    assert strip[0] == strip[1]

    # ...and the check is not vacuous: the same comparison in train mode is far off.
    train = model_of(model.state_dict(), spec).train()
    deploy = model_of(torch.load(deploy_p, weights_only=True), spec, "deploy")
    x = make_inputs(0, 2, 32)
    with torch.no_grad():
        ref, out = train(x), deploy(x)
    assert float((ref - out).abs().max() / ref.abs().max()) > 100 * RTOL


# ---------------------------------------------------------------- pairing errors, before numbers


@pytest.fixture(scope="module")
def pairing_files(tmp_path_factory):
    """Checkpoints for the pairing errors, written once (verify only reads them)."""
    folder = tmp_path_factory.mktemp("pairing")
    train = train_sd()
    deploy = fuse_state_dict(train, get_arch("s1"))
    g = torch.Generator().manual_seed(0)
    ten_classes = {**deploy, "linear.weight": torch.randn(10, 1280, generator=g) / 36,
                   "linear.bias": torch.zeros(10)}
    s2_deploy = random_state_dict(get_arch("s2"), form="deploy", seed=0)
    return {name: save(folder / f"{name}.pth", sd)
            for name, sd in (("s1_train", train), ("s1_deploy", deploy),
                             ("s2_deploy", s2_deploy), ("s1_10", ten_classes))}


@pytest.mark.parametrize("case,message", [
    ("swapped", "swapped"), ("both_train", "second file must be the deploy"),
    ("both_deploy", "first file must be the train"), ("arch", "architecture mismatch"),
    ("classes", "head mismatch")])
def test_mismatched_files_are_refused_before_any_number(case, message, pairing_files, run_cli):
    t1, d1 = pairing_files["s1_train"], pairing_files["s1_deploy"]
    pairs = {"swapped": (d1, t1), "both_train": (t1, t1), "both_deploy": (d1, d1),
             "arch": (t1, pairing_files["s2_deploy"]), "classes": (t1, pairing_files["s1_10"])}
    res = run_cli("verify", *pairs[case])
    assert res.exit_code == 2
    assert message in res.stderr
    assert res.stdout == "" and "Traceback" not in res.output


def test_deploy_file_alone_is_refused(write_ckpt, run_cli):
    res = run_cli("verify", write_ckpt("s0", form="deploy"))
    assert res.exit_code == 2 and "already deploy-form" in res.stderr


# ---------------------------------------------------------------- layouts and headless models


def test_layouts_on_each_side(tmp_path, run_cli):
    spec = get_arch("s1")
    sd = train_sd()
    mm = remap(sd, spec, "apple", "mmpretrain", "train")
    torch.save({"meta": {"epoch": 3}, "state_dict": mm}, tmp_path / "mm.pth")
    timm_deploy = remap(fuse_state_dict(mm, spec, layout="mmpretrain"), spec, "mmpretrain",
                        "timm", "deploy")
    save(tmp_path / "timm.safetensors", timm_deploy)
    apple_deploy = save(tmp_path / "apple.pth", fuse_state_dict(sd, spec))
    apple_train = save(tmp_path / "apple_train.pth", sd)
    args = ("--input-size", "32", "--batch", "2", "--json")
    res = run_cli("verify", str(tmp_path / "mm.pth"), str(tmp_path / "timm.safetensors"), *args)
    assert res.exit_code == 0, res.output
    rep = strict_json(res.stdout)
    assert (rep["train"]["layout"], rep["deploy"]["layout"]) == ("mmpretrain", "timm")
    same = strict_json(run_cli("verify", apple_train, apple_deploy, *args).stdout)
    # The same tensors under other names: the same numbers (to the last bits, which can move
    # with how the tensors sit in memory: mmap'ed safetensors vs torch.load).
    got, want = rep["fp32"]["output"], same["fp32"]["output"]
    assert got["scale"] == pytest.approx(want["scale"], rel=1e-6)
    assert abs(got["max_abs"] - want["max_abs"]) <= 1e-6 * want["scale"]
    for x, y in zip(rep["blocks"], same["blocks"]):
        assert x["name"] == y["name"] and abs(x["own_abs"] - y["own_abs"]) <= 1e-6 * y["scale"]


def test_headless_checkpoint_compares_feature_maps(tmp_path):
    spec = get_arch("s1", num_classes=0)
    sd = {k: v for k, v in train_sd().items() if not k.startswith("linear.")}
    deploy = fuse_state_dict(sd, spec)
    rep = V.verify_files(save(tmp_path / "t.pth", sd), save(tmp_path / "d.pth", deploy),
                         input_size=32, batch=2, seed=4)
    out_m = rep.verdict.fp32.output
    assert rep.passed and rep.verdict.compared == "feature map" and out_m.top1 is None
    x = make_inputs(4, 2, 32)
    with torch.no_grad():
        ref = model_of(sd, spec)(x)
        out = model_of(deploy, spec, "deploy")(x)
    assert ref.shape == (2, 1280, 1, 1)
    assert abs(out_m.max_abs - float((ref - out).abs().max())) <= 1e-6 * out_m.scale
    assert rep.stages[-1].name == "stage4"  # no head row


def test_fp64_reference_separates_rounding_from_fusion(tmp_path):
    spec = get_arch("s0")
    sd = train_sd("s0")
    deploy = fuse_state_dict(sd, spec)
    rep = V.verify_state_dicts(sd, deploy, spec, seed=2, batch=2, input_size=32,
                               reference="fp64")
    v = rep.verdict
    x = make_inputs(2, 2, 32)
    sd64 = {k: (t.double() if t.is_floating_point() else t) for k, t in sd.items()}
    d64 = {k: t.double() for k, t in deploy.items()}
    with torch.no_grad():
        ref64 = model_of(sd64, spec, dtype=torch.float64)(x.double())
        ref32 = model_of(sd, spec)(x)
        out64 = model_of(d64, spec, "deploy", dtype=torch.float64)(x.double())
    scale = float(ref64.abs().max())
    assert v.fp64 is not None and v.passed
    m = v.train_fp32_vs_fp64
    assert m.scale == pytest.approx(scale, rel=1e-12)
    assert abs(m.max_abs - float((ref64 - ref32.double()).abs().max())) <= 1e-6 * scale
    assert 0 < m.max_rel < RTOL / 10  # fp32 rounding of the train model, ~1e-6
    m = v.fp64.output  # the fp32-stored fusion, computed in float64
    assert abs(m.max_abs - float((ref64 - out64).abs().max())) <= 1e-9 * scale
    assert m.max_rel < RTOL / 10  # only the weights' fp32 rounding is left


# ---------------------------------------------------------------- metrics, by hand


def test_compare_outputs_by_hand():
    ref = torch.tensor([[1.0, 5.0, 3.0, 0.0, -2.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0, 10.0]])
    out = ref.clone()
    out[0, 1] = 2.0  # row 0: argmax moves from index 1 to index 5; the top-5 set is the same
    m = H.compare_outputs(ref, out)
    assert m.max_abs == 3.0 and m.scale == 10.0 and m.max_rel == pytest.approx(0.3)
    assert m.top1 == 0.5
    assert m.top5 == 1.0
    r0, o0 = ref[0].double(), out[0].double()
    cos0 = float(r0 @ o0 / (r0.norm() * o0.norm()))
    assert m.cosine == pytest.approx(cos0, rel=1e-12)
    assert H.compare_outputs(ref, ref).max_abs == 0.0


# ---------------------------------------------------------------- inputs: images, sizes, device


def _write_images(folder, count=3):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    sizes = [(100, 80), (90, 120), (70, 70)]
    for i in range(count):
        w, h = sizes[i % 3]
        arr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        img = Image.fromarray(arr)
        if i == 2:
            img = img.convert("L")  # grayscale is converted to RGB
        img.save(os.path.join(folder, f"img{i}.{'jpg' if i == 1 else 'png'}"))


def test_images_folder_is_used(tmp_path, write_ckpt, run_cli):
    pytest.importorskip("PIL")
    folder = tmp_path / "imgs"
    folder.mkdir()
    _write_images(str(folder))
    (folder / "notes.txt").write_text("not an image")
    res = run_cli("verify", write_ckpt("s1", seed=SEED), "--images", str(folder),
                  "--input-size", "32", "--json")
    assert res.exit_code == 0, res.output
    rep = strict_json(res.stdout)
    assert rep["inputs"]["kind"] == "images" and rep["inputs"]["files"] == 3
    assert rep["inputs"]["shape"] == [3, 3, 32, 32]


def test_imagenet_preprocessing_by_hand():
    Image = pytest.importorskip("PIL.Image")
    from mobileone_cli.check.images import preprocess

    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    # Short edge already 256: no resize, the crop is the centre 224x224 (top 16, left 48).
    g = torch.Generator().manual_seed(1)
    arr = torch.randint(0, 256, (256, 320, 3), generator=g, dtype=torch.uint8)
    got = preprocess(Image.fromarray(arr.numpy()))
    want = (arr[16:240, 48:272].permute(2, 0, 1).float() / 255 - mean) / std
    assert got.shape == (3, 224, 224)
    assert torch.allclose(got, want, atol=1e-6)
    # A flat colour stays flat through resize and crop, at the normalised value.
    got = preprocess(Image.new("RGB", (500, 300), (10, 128, 250)))
    want = (torch.tensor([10, 128, 250]).float().reshape(3, 1, 1) / 255 - mean) / std
    assert got.shape == (3, 224, 224) and torch.allclose(got, want.expand(3, 224, 224), atol=1e-6)


def test_images_without_pillow_says_what_to_install(tmp_path, write_ckpt, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    folder = tmp_path / "imgs"
    folder.mkdir()
    res = run_cli("verify", write_ckpt("s0"), "--images", str(folder))
    assert res.exit_code == 2
    assert "Pillow" in res.stderr and "pip install" in res.stderr


@pytest.mark.parametrize("content,message", [(None, "no .png/.jpg/.jpeg"),
                                             (b"\x89PNG broken", "cannot read image")])
def test_bad_image_folders(content, message, tmp_path, write_ckpt, run_cli):
    pytest.importorskip("PIL")
    folder = tmp_path / "imgs"
    folder.mkdir()
    if content is not None:
        (folder / "broken.png").write_bytes(content)
    res = run_cli("verify", write_ckpt("s0"), "--images", str(folder))
    assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize("args,message", [
    (("--input-size", "0"), "between 1 and"), (("--input-size", "abc"), "give one size"),
    (("--device", "cuda"), "CUDA is not available"), (("--device", "banana"), "not a device"),
    (("--batch", "0"), "--batch 0"), (("--rtol", "-1"), "--rtol")])
def test_bad_options(args, message, write_ckpt, run_cli):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    res = run_cli("verify", write_ckpt("s0"), *args)
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert res.stdout == ""


def test_input_size_two_values(write_ckpt, run_cli):
    ck = write_ckpt("s1", seed=SEED)
    res = run_cli("verify", ck, "--input-size", "32x48", "--batch", "1", "--json")
    assert res.exit_code == 0 and strict_json(res.stdout)["inputs"]["shape"] == [1, 3, 32, 48]
    res = run_cli("verify", ck, "--input-size", "32", "48", "--batch", "1", "--json")
    assert res.exit_code == 0 and strict_json(res.stdout)["inputs"]["shape"] == [1, 3, 32, 48]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_tf32(tmp_path):
    spec = get_arch("s4")
    sd = random_state_dict(spec, seed=121)
    deploy = fuse_state_dict(sd, spec)
    rep = V.verify_state_dicts(sd, deploy, spec, batch=4, input_size=224, device="cuda")
    assert rep.passed and rep.verdict.fp32.output.max_rel < RTOL / 10  # TF32: ~1e-3


def test_command_module_does_not_import_torch():
    code = ("import sys; import mobileone_cli.commands.verify; from mobileone_cli.cli import cli; "
            "from click.testing import CliRunner; r = CliRunner().invoke(cli, ['verify', '--help']); "
            "assert r.exit_code == 0 and '--reference' in r.output, r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
