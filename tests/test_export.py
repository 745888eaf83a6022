"""`mobileone export` to ONNX, checked in onnxruntime.

The exported files are run here with onnxruntime directly, and compared with an independent
computation: the TRAIN-form model in eval mode built from the original checkpoint (so neither the
fusion nor the package's own ONNX check is trusted).  Tolerances are relative to the output's
magnitude: 1e-3 for fp32 (honest: 1e-7..1e-4 on these random networks), 1e-2 for fp16 (honest:
~1e-3); a wrong graph lands far above (see test_onnx_check_catches_a_different_model).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
import torch

from mobileone_cli.arch.specs import get_arch
from mobileone_cli.errors import VerificationFailed
from mobileone_cli.jobs.export import check_onnx, export_file
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.arch.layouts import remap
from mobileone_cli.models.mobileone import MobileOne
from mobileone_cli.models.synthetic import random_state_dict

from .conftest import FOUR_STAGE

HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
HAVE_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnx/onnxruntime not installed "
                               "(pip install 'mobileone-cli[onnx]'; .ci/run installs it)")
# Both batch sizes and both resolutions; the package's own check covers all four combinations.
SHAPES = [(1, 64, 64), (3, 96, 128)]


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    return float((ref - got).abs().max() / ref.abs().max())


def _train_model(sd, arch, dtype):
    model = MobileOne(arch).to(dtype).eval()
    model.load_state_dict({k: (v.to(dtype) if v.is_floating_point() else v)
                           for k, v in sd.items()}, strict=True)
    return model


def _images(i, b, h, w):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(100 + i))


_SESSIONS = {}


def _ort_run(path, x):
    import onnxruntime as ort

    if path not in _SESSIONS:
        _SESSIONS[path] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    sess = _SESSIONS[path]
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """s0 (Apple layout) and the four-stage custom network (timm layout, SE blocks as in s4,
    given as the expected architecture) train checkpoints, exported once each with the
    default (dynamo) exporter, dynamic batch and dynamic height/width."""
    from mobileone_cli.io.write import save_checkpoint

    if not HAVE_ORT:
        pytest.skip("onnxruntime not installed")
    root = tmp_path_factory.mktemp("export")
    out = {}
    for arch, layout, seed in (("s0", "apple", 21), ("custom", "timm", 22)):
        spec = FOUR_STAGE if arch == "custom" else get_arch(arch)
        sd = random_state_dict(spec, layout=layout, seed=seed)
        src = str(root / f"{arch}_{layout}_train.pth")
        save_checkpoint(src, sd, force=True)
        dst = str(root / f"{arch}.onnx")
        res = export_file(src, dst, input_size=(64, 64),
                          arch=spec if arch == "custom" else None)
        apple = remap(sd, spec, layout, "apple", "train")  # the same tensors under Apple keys
        out[arch] = (res, dst, apple, spec)
    return out


@pytest.mark.slow  # the shared dynamic exports (module fixture)
@needs_ort
@pytest.mark.parametrize("arch", ["s0", "custom"])
def test_dynamic_export_matches_independent_train_model(exported, arch):
    import onnx

    res, path, train_sd, spec = exported[arch]
    model = onnx.load(path)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    if HAVE_ONNXSCRIPT:  # auto picks the dynamo exporter, which writes opset >= 18
        assert res.exporter == "dynamo" and res.opset >= 18
    assert res.dtype == "fp32"
    train = _train_model(train_sd, spec, torch.float32)
    for i, (b, h, w) in enumerate(SHAPES):
        x = _images(i, b, h, w)
        with torch.no_grad():
            ref = train(x)
        got = _ort_run(path, x)
        assert got.shape == (b, spec.num_classes)
        assert _rel(ref, got) < 1e-3, (arch, b, h, w)
        assert torch.equal(got.argmax(1), ref.argmax(1))


@pytest.mark.slow  # the shared dynamic exports (module fixture)
@needs_ort
@pytest.mark.parametrize("arch", ["s0", "custom"])
def test_export_reports_its_own_onnxruntime_check(exported, arch):
    res, path, _, _ = exported[arch]
    assert [(c.batch, c.height, c.width) for c in res.checks] == [
        (1, 64, 64), (1, 96, 128), (3, 64, 64), (3, 96, 128)]
    assert all(c.passed and c.metrics.max_rel <= c.tolerance for c in res.checks)
    assert res.fused and res.fusion_metrics is not None and res.fusion_metrics.max_rel < 1e-4
    assert res.size_out == os.path.getsize(path)
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]


@pytest.mark.slow  # the shared dynamic exports (module fixture)
@needs_ort
def test_onnx_check_catches_a_different_model(exported):
    """The check can fail: the s0 file against weights with one bias moved by 1e-2."""
    res, path, train_sd, spec = exported["s0"]
    deploy = fuse_state_dict(train_sd, spec)
    deploy["stage2.3.reparam_conv.bias"] = deploy["stage2.3.reparam_conv.bias"] + 1e-2
    checks = check_onnx(path, deploy, spec, [(1, 64, 64)])
    assert not checks[0].passed and checks[0].metrics.max_rel > checks[0].tolerance


@needs_ort
def test_failed_check_writes_nothing(write_ckpt, tmp_path, monkeypatch):
    """A graph that computes something else (here: one bias changed before export) -> exit 1,
    no OUT, no temp file."""
    import mobileone_cli.runtimes.onnx as onnx_runtime

    real = onnx_runtime.export

    def tampered(model, path, **kw):
        conv = model.stage1[0].reparam_conv  # a new tensor: the model shares the checked weights
        conv.bias = torch.nn.Parameter(conv.bias.detach() + 0.05)
        return real(model, path, **kw)

    monkeypatch.setattr(onnx_runtime, "export", tampered)
    src = write_ckpt("s0", seed=5)
    dst = str(tmp_path / "bad.onnx")
    with pytest.raises(VerificationFailed, match="nothing was written"):
        export_file(src, dst, input_size=(64, 64), exporter="torchscript", verify=False)
    assert not os.path.exists(dst)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@needs_ort
def test_fp16_export_low_opset_and_cli(write_ckpt, run_cli, tmp_path):
    """fp16 weights/input/output; --opset 17 makes auto pick the TorchScript exporter."""
    import onnx

    spec = get_arch("s0")
    src = write_ckpt("s0", layout="mmpretrain", seed=7)
    dst = str(tmp_path / "s0_fp16.onnx")
    res = run_cli("export", src, dst, "--input-size", "64", "64", "--dtype", "fp16",
                  "--opset", "17", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["exporter"] == "torchscript" and info["opset"] == 17 and info["dtype"] == "fp16"
    model = onnx.load(dst)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.opset_import[0].version == 17
    sd = random_state_dict(spec, seed=7)
    train = _train_model(sd, spec, torch.float32)
    # What fp16 weights alone cost on this network, computed here in float64 (a calibrated
    # network amplifies rounding: it is not a fixed fraction of the output).
    half = {k: v.half().double() for k, v in fuse_state_dict(sd, spec).items()}
    rounded = MobileOne(spec, deploy=True).double().eval()
    rounded.load_state_dict(half)
    for i, (b, h, w) in enumerate([(1, 64, 64), (2, 96, 128)]):
        x = _images(i, b, h, w).half()
        got = _ort_run(dst, x)
        assert got.dtype == torch.float16
        with torch.no_grad():
            ref = train(x.float())
            cost = _rel(ref, rounded(x.double()).float())
        # fp16 arithmetic adds rounding of the same kind as fp16 weights; a wrong graph (a
        # dropped SE, wrong padding) costs far more.
        assert _rel(ref, got) < 3 * cost + 1e-2, (_rel(ref, got), cost)
    assert all(c["passed"] and c["metrics_vs_fp32"] is not None
               for c in info["onnxruntime_checks"])


@needs_ort
def test_headless_backbone_has_dynamic_feature_map(tmp_path):
    """num_classes=0: the output is the feature map, its height/width follow the input's."""
    from mobileone_cli.io.write import save_checkpoint

    spec = get_arch("s0", 0)
    sd = random_state_dict(spec, seed=9)
    src = str(tmp_path / "s0_headless.pth")
    save_checkpoint(src, sd, force=True)
    dst = str(tmp_path / "s0_headless.onnx")
    res = export_file(src, dst, input_size=(64, 64), exporter="torchscript", verify=False)
    assert res.output_name == "features"
    x = _images(0, 2, 96, 128)
    got = _ort_run(dst, x)
    with torch.no_grad():
        ref = _train_model(sd, spec, torch.float32)(x)
    assert got.shape == ref.shape == (2, 1024, 3, 4)
    assert _rel(ref, got) < 1e-3


@needs_ort
def test_fixed_batch_and_size(write_ckpt, tmp_path):
    src = write_ckpt("s0", seed=4)
    dst = str(tmp_path / "fixed.onnx")
    res = export_file(src, dst, input_size=(64, 96), batch=2, dynamic_size=False,
                      exporter="torchscript", verify=False)
    assert res.input_shape == [2, 3, 64, 96]
    assert [(c.batch, c.height, c.width) for c in res.checks] == [(2, 64, 96)]


def test_existing_output_needs_force(write_ckpt, run_cli, tmp_path):
    src = write_ckpt("s0")
    dst = tmp_path / "taken.onnx"
    dst.write_bytes(b"keep me")
    res = run_cli("export", src, str(dst))
    assert res.exit_code == 2
    assert "already exists" in res.stderr and "--force" in res.stderr
    assert dst.read_bytes() == b"keep me"


def test_missing_onnxruntime_says_what_to_install(write_ckpt, run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    res = run_cli("export", write_ckpt("s0"), str(tmp_path / "m.onnx"))
    assert res.exit_code == 2
    assert "onnxruntime" in res.stderr and "pip install 'mobileone-cli[onnx]'" in res.stderr
    assert "Traceback" not in res.output
    assert not os.path.exists(tmp_path / "m.onnx")


@pytest.mark.parametrize("args, msg", [
    (("--batch", "many"), "give a number or 'dynamic'"),
    (("--input-size", "1", "64"), "between 2 and"),
    (("--exporter", "dynamo", "--opset", "13"), "opset >= 18"),
])
def test_bad_options_exit_2(args, msg, write_ckpt, run_cli, tmp_path):
    if args[0] == "--exporter" and not (HAVE_ORT and HAVE_ONNXSCRIPT):
        pytest.skip("needs onnx, onnxruntime and onnxscript to get that far")
    res = run_cli("export", write_ckpt("s0"), str(tmp_path / "m.onnx"), *args)
    assert res.exit_code == 2 and msg in res.stderr, res.output
