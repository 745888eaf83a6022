"""Apple, mmpretrain and timm layouts in and out, wrappers, embedded backbones, safe loading.

Expected keys are derived here, independently of mobileone_cli.arch.layouts: a generator of Apple keys
written from the architecture of apple/ml-mobileone (widths, k, SE per variant), and a translator to
the other layouts written from mmpretrain's and timm's module names (checked against literal keys
and the exact key counts).
"""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from mobileone_cli.arch.specs import get_arch
from mobileone_cli.io.read import load_checkpoint
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.jobs.convert import convert_state_dict
from mobileone_cli.io.detect import detect_layout, tensor_info
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict

from .conftest import ARCHS, COUNTS, LAYOUTS, REF, as_layout, translate

BN5 = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def apple_keys(arch: str, form: str, head: bool = True):
    """Apple keys of a variant, written out from the published architecture and Apple's module
    names."""
    stem, widths, se, k = REF[arch]
    out = []

    def block(pre, cin, cout, kernel, stride, branches, has_se):
        if has_se:
            out.extend(f"{pre}.se.{m}.{p}" for m in ("reduce", "expand") for p in ("weight", "bias"))
        if form == "deploy":
            out.extend((f"{pre}.reparam_conv.weight", f"{pre}.reparam_conv.bias"))
            return
        for n in range(branches):
            out.append(f"{pre}.rbr_conv.{n}.conv.weight")
            out.extend(f"{pre}.rbr_conv.{n}.bn.{leaf}" for leaf in BN5)
        if kernel > 1:
            out.append(f"{pre}.rbr_scale.conv.weight")
            out.extend(f"{pre}.rbr_scale.bn.{leaf}" for leaf in BN5)
        if cin == cout and stride == 1:
            out.extend(f"{pre}.rbr_skip.{leaf}" for leaf in BN5)

    block("stage0", 3, stem, 3, 2, 1, False)
    c = stem
    for s, (w, pairs) in enumerate(zip(widths, (2, 8, 10, 1)), start=1):
        for p in range(pairs):
            has_se = se and ((s == 3 and p >= 5) or s == 4)
            block(f"stage{s}.{2 * p}", c, c, 3, 2 if p == 0 else 1, k, has_se)
            block(f"stage{s}.{2 * p + 1}", c, w, 1, 1, k, has_se)
            c = w
    if head:
        out.extend(("linear.weight", "linear.bias"))
    return out


# Literal keys typed from the three libraries' state dicts, to check the generator and translator
# above.
LITERAL = {
    ("s0", "train", "apple"): ["stage0.rbr_conv.0.conv.weight", "stage1.0.rbr_conv.3.bn.running_var",
                               "stage1.1.rbr_skip.num_batches_tracked", "stage4.1.rbr_conv.3.bn.bias",
                               "linear.bias"],
    ("s0", "train", "mmpretrain"): ["backbone.stage0.branch_conv_list.0.norm.running_mean",
                                    "backbone.stage2.3.branch_norm.weight",
                                    "backbone.stage1.0.branch_scale.norm.num_batches_tracked",
                                    "head.fc.weight"],
    ("s0", "train", "timm"): ["stem.conv_kxk.0.bn.weight", "stages.0.0.conv_scale.conv.weight",
                              "stages.1.3.identity.running_var", "stages.3.1.conv_kxk.3.conv.weight"],
    ("s4", "train", "mmpretrain"): ["backbone.stage3.19.se.conv2.conv.bias",
                                    "backbone.stage4.0.se.conv1.conv.weight"],
    ("s4", "train", "timm"): ["stages.2.19.attn.fc1.weight", "stages.3.1.attn.fc2.bias"],
    ("s4", "deploy", "apple"): ["stage3.10.se.reduce.weight", "stage3.19.reparam_conv.bias"],
    ("s4", "deploy", "mmpretrain"): ["backbone.stage0.branch_reparam.weight",
                                     "backbone.stage4.1.se.conv2.conv.weight", "head.fc.bias"],
    ("s2", "deploy", "timm"): ["stem.reparam_conv.weight", "stages.1.15.reparam_conv.bias",
                               "head.fc.weight"],
}


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_key_tables(arch):
    train, deploy = apple_keys(arch, "train"), apple_keys(arch, "deploy")
    assert (len(train), len(deploy)) == COUNTS[arch]
    for lay in LAYOUTS:
        for form, keys in (("train", train), ("deploy", deploy)):
            got = {translate(k, lay) for k in keys}
            assert len(got) == len(keys)
            assert set(LITERAL.get((arch, form, lay), [])) <= got
    if arch == "s4":  # SE on the last 5 pairs of stage3 only
        assert "stage3.9.se.reduce.weight" not in train and "stage3.10.se.reduce.weight" in train


# ---------------------------------------------------------------------------------------------
# The full matrix, through the library: every variant, (source layout, form) x target layout.

@pytest.fixture(scope="module")
def sources():
    """Per variant: Apple train and deploy state dicts with random weights and BN statistics."""
    cache = {}

    def get(arch):
        if arch not in cache:
            spec = get_arch(arch)
            train = random_state_dict(spec, seed=100 + ARCHS.index(arch))
            deploy = fuse_state_dict(train, spec)
            assert list(train) and set(train) == set(apple_keys(arch, "train"))
            assert list(deploy) == apple_keys(arch, "deploy")
            cache[arch] = {"train": train, "deploy": deploy}
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_matrix(arch, sources):
    src = sources(arch)
    for lay in LAYOUTS:
        for form in ("train", "deploy"):
            sd = as_layout(src[form], lay)
            det = detect_layout(tensor_info(sd))
            assert (det.layout, det.form, det.arch.name, det.num_classes, det.prefix) == \
                (lay, form, arch, 1000, "")
            for target in LAYOUTS:
                # Remap only (deploy input, or --no-fuse): same tensors under the target's keys.
                out = convert_state_dict(sd, det, layout_out=target, fuse=False)
                want = {translate(k, target): v for k, v in src[form].items()}
                assert set(out) == set(want), (lay, form, target)
                assert len(out) == COUNTS[arch][form == "deploy"]
                for k, v in want.items():
                    assert out[k].dtype == v.dtype and torch.equal(out[k], v), (lay, form, target, k)
                if form == "deploy":
                    # Apple's save order carried over to every layout.
                    assert list(out) == [translate(k, target) for k in apple_keys(arch, "deploy")]


# Each source layout is fused once, into another layout; together they cover every target.
FUSE_CELLS = [("apple", "timm"), ("mmpretrain", "apple"), ("timm", "mmpretrain")]


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_outputs_bit_identical_across_layouts(arch, sources):
    src = sources(arch)
    want_order = apple_keys(arch, "deploy")
    for lay, target in FUSE_CELLS:
        sd = as_layout(src["train"], lay)
        fused = convert_state_dict(sd, detect_layout(tensor_info(sd)), layout_out=target)
        # Same keys, same order, same bits as the Apple fusion remapped by the key rules above
        # (and that one is checked against the train model below and in test_foundation).
        assert list(fused) == [translate(k, target) for k in want_order], (lay, target)
        for k in want_order:
            got = fused[translate(k, target)]
            assert got.dtype == src["deploy"][k].dtype and torch.equal(got, src["deploy"][k])


@pytest.mark.parametrize("arch", ["s0", "s4"])
def test_fused_from_foreign_layout_computes_the_train_function(arch, sources):
    """timm train input -> mmpretrain deploy output, loaded back under Apple names by hand."""
    spec = get_arch(arch)
    train_apple = sources(arch)["train"]
    sd = as_layout(train_apple, "timm")
    det = detect_layout(tensor_info(sd))
    out = convert_state_dict(sd, det, layout_out="mmpretrain")
    back = {k: out[translate(k, "mmpretrain")] for k in apple_keys(arch, "deploy")}
    # float64, so that what is compared is the layout handling, not fp32 rounding
    train = MobileOne(spec).double().eval()
    train.load_state_dict(train_apple, strict=True)
    deploy = MobileOne(spec, deploy=True).double().eval()
    deploy.load_state_dict(back, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        ref, got = train(x), deploy(x)
    # The fp32-stored fused weights are the only difference: well inside the check's rtol.
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-5


def test_headless_detected_in_every_layout(sources):
    train = {k: v for k, v in sources("s1")["train"].items() if not k.startswith("linear.")}
    for lay in LAYOUTS:
        det = detect_layout(tensor_info(as_layout(train, lay)))
        assert (det.layout, det.num_classes, det.arch.name) == (lay, 0, "s1")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_half_fused_file_is_refused_naming_blocks(layout, sources):
    from mobileone_cli.errors import BadInput

    train, deploy = sources("s1")["train"], sources("s1")["deploy"]
    mixed = {k: v for k, v in train.items() if not k.startswith("stage2.3.")}
    mixed.update({k: v for k, v in deploy.items() if k.startswith("stage2.3.")})
    with pytest.raises(BadInput) as exc:
        detect_layout(tensor_info(as_layout(mixed, layout)))
    block = {"apple": "stage2.3", "mmpretrain": "backbone.stage2.3", "timm": "stages.1.3"}[layout]
    assert "mixes train-form and deploy-form" in exc.value.message
    assert block in exc.value.message.split("deploy:")[1]


# ---------------------------------------------------------------------------------------------
# A few cells through the command line.

def _load(path):
    return torch.load(path, weights_only=True)


def test_cli_mmpretrain_train_to_timm_is_bare(sources, tmp_path, run_cli):
    src = tmp_path / "mm.pth"
    torch.save({"meta": {"epoch": 3}, "state_dict": as_layout(sources("s1")["train"], "mmpretrain")},
               src)
    dst = tmp_path / "timm.pth"
    res = run_cli("convert", src, dst, "--to", "timm", "--no-verify")
    assert res.exit_code == 0, res.output
    out = _load(dst)
    assert "state_dict" not in out and "meta" not in out
    assert list(out) == [translate(k, "timm") for k in apple_keys("s1", "deploy")]
    for k, v in sources("s1")["deploy"].items():
        assert torch.equal(out[translate(k, "timm")], v)


def test_cli_deploy_to_mmpretrain_wraps_and_keeps_meta(sources, tmp_path, run_cli):
    src = tmp_path / "mm_deploy.pth"
    torch.save({"meta": {"epoch": 12, "dataset_meta": {"classes": ["cat"]}},
                "state_dict": as_layout(sources("s0")["deploy"], "mmpretrain"),
                "optimizer": {"state": {}}}, src)
    dst = tmp_path / "again.pth"
    res = run_cli("convert", src, dst)  # no --to: the source layout
    assert res.exit_code == 0, res.output
    assert "without re-fusing" in res.stdout
    obj = _load(dst)
    assert sorted(obj) == ["meta", "state_dict"]
    assert obj["meta"]["epoch"] == 12 and obj["meta"]["dataset_meta"] == {"classes": ["cat"]}
    assert obj["meta"]["arch"] == "s0" and obj["meta"]["form"] == "deploy"
    want = as_layout(sources("s0")["deploy"], "mmpretrain")
    assert list(obj["state_dict"]) == list(want)
    assert all(torch.equal(obj["state_dict"][k], v) for k, v in want.items())


def test_cli_timm_deploy_to_apple_and_no_fuse_to_mmpretrain(sources, tmp_path, run_cli):
    src = tmp_path / "timm_deploy.safetensors"
    save_checkpoint(str(src), as_layout(sources("s2")["deploy"], "timm"))
    res = run_cli("convert", src, tmp_path / "apple.pth", "--to", "apple")
    assert res.exit_code == 0, res.output
    out = _load(tmp_path / "apple.pth")
    assert list(out) == apple_keys("s2", "deploy")
    assert all(torch.equal(out[k], v) for k, v in sources("s2")["deploy"].items())

    src = tmp_path / "apple_train.pth"
    save_checkpoint(str(src), sources("s1")["train"])
    res = run_cli("convert", src, tmp_path / "mm_train.pth", "--to", "mmpretrain", "--no-fuse")
    assert res.exit_code == 0, res.output
    assert "--no-fuse" in res.stdout
    obj = _load(tmp_path / "mm_train.pth")
    assert obj["meta"]["form"] == "train"
    want = as_layout(sources("s1")["train"], "mmpretrain")
    assert set(obj["state_dict"]) == set(want) and len(want) == 562
    assert all(torch.equal(obj["state_dict"][k], v) for k, v in want.items())


def test_convert_file_checks_a_foreign_layout(sources, tmp_path):
    from mobileone_cli.jobs.convert import convert_file

    src = tmp_path / "timm_train.pth"
    save_checkpoint(str(src), as_layout(sources("s1")["train"], "timm"))
    r = convert_file(str(src), str(tmp_path / "o.pth"), layout_out="mmpretrain",
                     input_size=(64, 64))
    assert (r.detection.layout, r.layout_out, r.form_out) == ("timm", "mmpretrain", "deploy")
    from mobileone_cli.rules.tolerances import DEFAULT_RTOL

    # within the rule's base rtol (fp32 rounding of a calibrated s1: ~1e-5, seed-dependent)
    assert r.metrics is not None and r.metrics.max_rel < DEFAULT_RTOL
    sd = _load(tmp_path / "o.pth")["state_dict"]
    for k, v in sources("s1")["deploy"].items():
        assert torch.equal(sd[translate(k, "mmpretrain")], v)


# ---------------------------------------------------------------------------------------------
# timm's own model, when it is installed.

@pytest.mark.parametrize("arch", ["s0", "s4"])
def test_timm_loads_our_deploy_output(arch, sources):
    timm = pytest.importorskip(
        "timm", reason="timm is not installed (it needs torchvision, optional for mobileone)")
    from timm.utils.model import reparameterize_model

    spec = get_arch(arch)
    sd = as_layout(sources(arch)["train"], "timm")
    det = detect_layout(tensor_info(sd))
    ours = convert_state_dict(sd, det, layout_out="timm")
    # timm's inference_mode blocks lose their padding (a known timm behaviour): build the train
    # model, reparameterize it, then load the fused weights.
    model = reparameterize_model(timm.create_model(f"mobileone_{arch}", pretrained=False)).eval()
    model.load_state_dict(ours, strict=True)
    train = MobileOne(spec).eval()
    train.load_state_dict(sources(arch)["train"], strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, got = train(x), model(x)
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-5


# ---------------------------------------------------------------------------------------------
# Embedded backbones and prefixes.

def _extra_tensors():
    g = torch.Generator().manual_seed(9)
    return {
        "neck.lateral.0.weight": torch.randn(64, 1024, 1, 1, generator=g),
        "neck.lateral.0.bias": torch.randn(64, generator=g).half(),
        "bbox_head.cls.weight": torch.randn(80, 64, 3, 3, generator=g).to(torch.bfloat16),
        "bbox_head.anchors": torch.randint(0, 1000, (9, 4), generator=g),
        "bbox_head.mask": torch.rand(5, generator=g) > 0.5,
        "bbox_head.step": torch.tensor(7),
    }


def _raw(t):
    return bytes(t.reshape(-1).view(torch.uint8).numpy())


def _assert_byte_identical(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and _raw(a) == _raw(b)


def test_detection_checkpoint_converts_only_the_backbone(sources, tmp_path, run_cli):
    extra = _extra_tensors()
    det_sd = {"data_preprocessor.mean": torch.tensor([123.7, 116.3, 103.5])}
    det_sd.update({"backbone." + k: v for k, v in sources("s0")["train"].items()
                   if not k.startswith("linear.")})
    det_sd.update(extra)
    src = tmp_path / "detector.pth"
    torch.save({"meta": {"task": "det"}, "state_dict": det_sd}, src)
    dst = tmp_path / "detector_deploy.pth"
    res = run_cli("convert", src, dst, "--to", "timm", "--no-verify")
    assert res.exit_code == 0, res.output
    out = _load(dst)
    backbone = ["backbone." + translate(k, "timm") for k in apple_keys("s0", "deploy", head=False)]
    # Other keys keep their places; the backbone block stands where it was.
    assert list(out) == ["data_preprocessor.mean"] + backbone + list(extra)
    for k, v in extra.items():
        _assert_byte_identical(out[k], v)
    _assert_byte_identical(out["data_preprocessor.mean"], det_sd["data_preprocessor.mean"])
    for k, v in sources("s0")["deploy"].items():
        if not k.startswith("linear."):
            assert torch.equal(out["backbone." + translate(k, "timm")], v)


def test_mmdet_style_backbone_keeps_its_layout_and_neighbours(sources):
    """mmdet holds an mmpretrain MobileOne as 'backbone.stage0.branch_conv_list...' (headless)."""
    extra = _extra_tensors()
    train = {k: v for k, v in as_layout(sources("s3")["train"], "mmpretrain").items()
             if not k.startswith("head.")}
    sd = {**train, **extra}
    det = detect_layout(tensor_info(sd))
    assert (det.layout, det.form, det.arch.name, det.num_classes) == ("mmpretrain", "train", "s3", 0)
    assert det.extra_keys == list(extra)
    out = convert_state_dict(sd, det)
    for k, v in extra.items():
        assert out[k] is v
    for k, v in sources("s3")["deploy"].items():
        if not k.startswith("linear."):
            assert torch.equal(out[translate(k, "mmpretrain")], v)
    assert len(out) == 88 - 2 + len(extra)


def test_two_mobileones_need_prefix(sources, tmp_path, run_cli):
    teacher = {"teacher." + translate(k, "timm"): v for k, v in sources("s0")["deploy"].items()}
    student = {"student." + k: v for k, v in sources("s1")["train"].items()}
    src = tmp_path / "distill.pth"
    save_checkpoint(str(src), {**teacher, **student})
    res = run_cli("convert", src, tmp_path / "o.pth")
    assert res.exit_code == 2
    assert "several MobileOnes" in res.stderr and "--prefix" in res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "o.pth").exists()
    res = run_cli("convert", src, tmp_path / "o.pth", "--prefix", "student", "--to", "mmpretrain",
                  "--no-verify")
    assert res.exit_code == 0, res.output
    out = _load(tmp_path / "o.pth")["state_dict"]
    assert list(out)[:len(teacher)] == list(teacher)
    for k, v in teacher.items():
        _assert_byte_identical(out[k], v)
    for k, v in sources("s1")["deploy"].items():
        assert torch.equal(out["student." + translate(k, "mmpretrain")], v)
    assert len(out) == len(teacher) + 88


def test_mmpretrain_backbone_only_dict(sources, tmp_path, run_cli):
    """``model.backbone.state_dict()`` of mmpretrain: no 'backbone.' root, no head."""
    bare = {translate(k, "mmpretrain")[len("backbone."):]: v
            for k, v in sources("s2")["train"].items() if not k.startswith("linear.")}
    assert "stage0.branch_conv_list.0.conv.weight" in bare
    det = detect_layout(tensor_info(bare))
    assert (det.layout, det.arch.name, det.num_classes, det.implied_root) == \
        ("mmpretrain", "s2", 0, "backbone.")
    src = tmp_path / "backbone.pth"
    save_checkpoint(str(src), bare)
    for target, form, flags in (("mmpretrain", "deploy", []), ("apple", "train", ["--no-fuse"])):
        dst = tmp_path / f"{target}.pth"
        res = run_cli("convert", src, dst, "--to", target, "--no-verify", *flags)
        assert res.exit_code == 0, res.output
        obj = _load(dst)
        out = obj["state_dict"] if target == "mmpretrain" else obj
        strip = "backbone." if target == "mmpretrain" else ""  # still backbone-only
        want = {translate(k, target)[len(strip):]: v for k, v in sources("s2")[form].items()
                if not k.startswith("linear.")}
        assert set(out) == set(want)
        assert all(torch.equal(out[k], v) for k, v in want.items())


# ---------------------------------------------------------------------------------------------
# Wrappers, prefixes, EMA.

@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd},
    lambda sd: {"module": sd},
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
    lambda sd: {"model." + k: v for k, v in sd.items()},
], ids=["bare", "state_dict", "model", "module", "ddp-prefix", "model-prefix"])
def test_wrappers_are_unwrapped(wrap, sources, tmp_path):
    sd = as_layout(sources("s1")["deploy"], "timm")
    path = tmp_path / "w.pth"
    torch.save(wrap(sd), path)
    ck = load_checkpoint(str(path))
    assert list(ck.state_dict) == list(sd)
    assert all(torch.equal(ck.state_dict[k], v) for k, v in sd.items())
    det = detect_layout(tensor_info(ck.state_dict))
    assert (det.layout, det.form, det.prefix) == ("timm", "deploy", "")


def test_ema_weights_are_chosen_with_ema(sources, tmp_path, run_cli):
    main = as_layout(sources("s1")["train"], "mmpretrain")
    ema_apple = {k: (v * 0.9 if v.is_floating_point() else v)  # positive variances stay positive
                 for k, v in sources("s1")["train"].items()}
    src = tmp_path / "ema.pth"
    torch.save({"meta": {}, "state_dict": main,
                "ema_state_dict": {"module." + k: v for k, v in as_layout(ema_apple, "mmpretrain")
                                   .items()}}, src)
    ck = load_checkpoint(str(src))
    assert ck.wrapper == "state_dict" and all(torch.equal(ck.state_dict[k], v)
                                              for k, v in main.items())
    res = run_cli("convert", src, tmp_path / "out.pth", "--to", "timm", "--no-fuse", "--ema")
    assert res.exit_code == 0, res.output
    out = _load(tmp_path / "out.pth")
    want = as_layout(ema_apple, "timm")
    assert set(out) == set(want) and all(torch.equal(out[k], v) for k, v in want.items())
    res = run_cli("convert", tmp_path / "out.pth", tmp_path / "x.pth", "--ema")
    assert res.exit_code == 2 and "no EMA weights" in res.stderr


# ---------------------------------------------------------------------------------------------
# Files that weights-only loading refuses: load what is safe, run nothing.

@pytest.fixture
def foreign_module(tmp_path):
    """A module importable while the test saves, then removed (like mmengine on a bare machine)."""
    name = f"fake_mmengine_{os.getpid()}"
    mod = types.ModuleType(name)
    exec("class HistoryBuffer:\n"
         "    def __init__(self, values):\n"
         "        self.values = values\n"
         "class ConfigDict(dict):\n"
         "    pass\n", mod.__dict__)
    for cls in (mod.HistoryBuffer, mod.ConfigDict):
        cls.__module__ = name
    sys.modules[name] = mod
    yield mod
    sys.modules.pop(name, None)


def test_mmengine_objects_load_as_placeholders_and_convert(foreign_module, sources, tmp_path,
                                                          run_cli):
    import numpy as np

    mod = foreign_module
    src = tmp_path / "epoch_12.pth"
    torch.save({"meta": {"epoch": 12, "cfg": mod.ConfigDict(lr=0.1), "hub_copy": mod.HistoryBuffer(1)},
                "state_dict": as_layout(sources("s0")["train"], "mmpretrain"),
                "message_hub": {"log_scalars": {"loss": mod.HistoryBuffer(np.arange(3.0))}}}, src)
    del sys.modules[mod.__name__]
    with pytest.raises(Exception):  # plain weights-only loading refuses the file
        torch.load(src, weights_only=True)

    ck = load_checkpoint(str(src))
    assert f"{mod.__name__}.HistoryBuffer" in ck.stubbed and not ck.trusted
    assert mod.__name__ not in sys.modules  # nothing was imported
    hub = ck.extras["message_hub"]["log_scalars"]["loss"]
    assert type(hub).__name__ == "HistoryBuffer" and type(hub).__module__ != mod.__name__

    dst = tmp_path / "deploy.pth"
    res = run_cli("convert", src, dst, "--no-verify")
    assert res.exit_code == 0, res.output
    assert "placeholders" in res.stdout
    obj = torch.load(dst, weights_only=True)  # the output is plain again
    assert obj["meta"]["epoch"] == 12 and obj["meta"]["cfg"] == {"lr": 0.1}
    assert "HistoryBuffer" in obj["meta"]["hub_copy"]
    for k, v in sources("s0")["deploy"].items():
        assert torch.equal(obj["state_dict"][translate(k, "mmpretrain")], v)


def _payload_module(tmp_path):
    """A real, importable module whose function leaves a mark when called."""
    name = f"i3_payload_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(
        "def touch(path):\n    open(path, 'w').write('ran')\n    return {}\n")
    sys.path.insert(0, str(tmp_path))
    return name


class _Runs:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def test_code_in_a_file_never_runs_without_trust(sources, tmp_path, run_cli):
    import importlib

    name = _payload_module(tmp_path)
    try:
        payload = importlib.import_module(name)
        mark = tmp_path / "mark"
        src = tmp_path / "evil.pth"
        sd = sources("s1")["deploy"]
        torch.save({"state_dict": sd, "hook": _Runs(payload.touch, str(mark))}, src)
        assert not mark.exists()

        ck = load_checkpoint(str(src))  # the payload module is importable, yet nothing runs
        assert not mark.exists()
        assert ck.stubbed == [f"{name}.touch"]
        assert all(torch.equal(ck.state_dict[k], v) for k, v in sd.items())

        res = run_cli("--trust-file", src, "convert", src, tmp_path / "o.pth")
        assert res.exit_code == 0, res.output
        assert "warning: trusted file" in res.stderr
        assert mark.exists()  # only the explicit opt-in runs the file's code
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_blocked_globals_need_trust(tmp_path, run_cli, sources):
    """torch never lets 'posix'/'os' globals through, not even as placeholders."""
    src = tmp_path / "os.pth"
    torch.save({"state_dict": sources("s1")["deploy"], "x": _Runs(os.getcwd, None)}, src)
    res = run_cli("convert", src, tmp_path / "o.pth")
    assert res.exit_code == 2, res.output
    assert "--trust-file" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "o.pth").exists()
