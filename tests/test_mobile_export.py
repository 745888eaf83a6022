"""Mobile exports: .pte (ExecuTorch), .tflite (LiteRT), .mlpackage (Core ML), each made by
`mobileone export` from train checkpoints (Apple and mmpretrain layouts, a custom --config) and
then checked HERE, independently of the package's own check:

* .pte and .tflite are executed in their runtimes (called directly, not through mobileone) and
  compared with the TRAIN model in eval mode in float64 built from the original tensors (so
  neither the fusion nor the package's check is trusted).  fp32: within 1e-3 of max |output|
  (the runtimes land at 1e-6..2e-4 on these networks).  fp16: within 1e-3 plus 4x what fp16
  costs this network, computed here (fp16 weights as the target stores them, and every module
  output rounded to fp16), the rule docs/export.md documents.
* .mlpackage cannot run on Linux: its weights are read back with coremltools' own MIL reader and
  compared with an independent fusion (conftest.fold_by_hand).
A tampered artifact fails `verify` (exit 1); without a runtime the command says what to install.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from mobileone_cli.errors import BadInput
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.mobileone import MeanPoolHead, MobileOne
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.specs import get_arch
from mobileone_cli.io.configfile import load_config
from mobileone_cli.arch.layouts import remap

from .conftest import fold_by_hand, invoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM = os.path.join(ROOT, "examples", "custom_3stage.yaml")


def _have(*mods):
    return all(importlib.util.find_spec(m) is not None for m in mods)


HAVE_ET = _have("executorch")
HAVE_LITERT = _have("litert_torch", "ai_edge_litert")
HAVE_CT = _have("coremltools")
needs_et = pytest.mark.skipif(not HAVE_ET, reason="executorch not installed (pip install "
                              "'mobileone-cli[executorch]'; .ci/run installs it)")
needs_litert = pytest.mark.skipif(not HAVE_LITERT, reason="litert-torch/ai-edge-litert not "
                                  "installed (pip install 'mobileone-cli[litert]'; .ci/run "
                                  "installs it)")
needs_ct = pytest.mark.skipif(not HAVE_CT, reason="coremltools not installed (pip install "
                              "'mobileone-cli[coreml]'; .ci/run installs it)")
SIZE = 64

# name -> (arch source, layout, seed, target extension, extra export arguments).  One released
# variant per executed format (fp16, where the size of the network matters); the rest on the
# custom network, whose export costs less: a dynamic batch takes the same path at any size.
CASES = {
    # a released variant in fp16 (s4 costs ExecuTorch's lowering ~4 s more; the custom network
    # covers SE on ExecuTorch, in fp32)
    "s0_pte_fp16": ("s0", "mmpretrain", 32, ".pte", ["--dtype", "fp16"]),
    "custom_pte": ("custom", "mmpretrain", 33, ".pte", ["--batch", "dynamic", "--max-batch",
                                                        "17"]),
    # fp16 and a dynamic batch in one s0 conversion (s4 costs LiteRT's converter ~20 s; the
    # custom network covers SE on LiteRT, in fp32)
    "s0_tflite_fp16": ("s0", "mmpretrain", 34, ".tflite", ["--dtype", "fp16", "--batch",
                                                          "dynamic"]),
    "custom_tflite": ("custom", "apple", 36, ".tflite", []),
    # the package's weights are compared exactly, tensor by tensor: no network size matters
    "custom_mlpackage_fp16": ("custom", "apple", 38, ".mlpackage", ["--batch", "dynamic",
                                                                    "--dtype", "fp16"]),
    "custom_mlpackage": ("custom", "mmpretrain", 39, ".mlpackage", []),
}
NEEDS = {".pte": HAVE_ET, ".tflite": HAVE_LITERT, ".mlpackage": HAVE_CT}


def _spec(name):
    return load_config(CUSTOM) if name == "custom" else get_arch(name)


class Made:
    """One export: its source tensors (Apple keys), paths and the command's JSON summary."""

    def __init__(self, root, case):
        arch, layout, seed, ext, extra = CASES[case]
        self.spec = _spec(arch)
        sd = random_state_dict(self.spec, layout=layout, seed=seed)
        self.src = str(root / f"{case}_{layout}_train.pth")
        # mmpretrain files wrap the state dict as mmengine writes it
        save_checkpoint(self.src, sd, force=True,
                        container={"meta": {"epoch": 3}} if layout == "mmpretrain" else None)
        self.train_sd = remap(sd, self.spec, layout, "apple", "train")
        self.dst = str(root / f"{case}{ext}")
        self.dtype = "fp16" if "fp16" in case else "fp32"
        args = ["export", self.src, self.dst, "--input-size", str(SIZE), "--json", *extra]
        if arch == "custom":
            args += ["--config", CUSTOM]
        res = invoke(*args)
        assert res.exit_code == 0, res.output
        self.summary = json.loads(res.stdout)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("mobile")
    cache = {}

    def get(case):
        if not NEEDS[CASES[case][3]]:
            pytest.skip(f"the runtime for {CASES[case][3]} is not installed")
        if case not in cache:
            cache[case] = Made(root, case)
        return cache[case]

    return get


def _train64(m):
    model = MobileOne(m.spec).double().eval()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v
                           for k, v in m.train_sd.items()}, strict=True)
    return model


def _images(i, b):
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(500 + i))


def _rel(ref, got):
    ref, got = ref.double(), got.double()
    return float((ref - got).abs().max() / ref.abs().max())


@torch.no_grad()
def _fp16_cost(m, x, weights_rule):
    """What fp16 costs this network, computed here: the deploy weights (an independent fusion)
    rounded as the target stores them, every module output rounded to fp16, in float64."""
    deploy = {k: weights_rule(k, v) for k, v in fold_by_hand(m.train_sd, m.spec).items()}
    model = MobileOne(m.spec, deploy=True).double().eval()
    model.load_state_dict(deploy, strict=True)
    hooks = [mod.register_forward_hook(lambda _m, _i, o: o.half().double())
             for mod in model.modules() if mod is not model]
    try:
        out = model(x.double().half().double())
    finally:
        for h in hooks:
            h.remove()
    return _rel(_train64(m)(x.double()), out)


def _run_pte(path, x):
    from executorch.extension.pybindings import portable_lib

    module = portable_lib._load_for_executorch(path)
    return module.forward((x,))[0]


def _run_tflite(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.numpy())
    interp.invoke()
    return torch.from_numpy(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())


@pytest.mark.slow  # a LiteRT conversion
def test_tflite_input_is_named_input_as_in_onnx(made):
    """The name the LiteRT interpreter reads back from the file: its signature's input is
    ``input`` and its output the ONNX output's name; the tensors carry the signature prefix."""
    from ai_edge_litert.interpreter import Interpreter

    m = made("custom_tflite")
    interp = Interpreter(model_path=m.dst)
    assert interp.get_signature_list() == {
        "serving_default": {"inputs": ["input"], "outputs": ["logits"]}}
    assert interp.get_input_details()[0]["name"] == "serving_default_input"
    runner = interp.get_signature_runner("serving_default")
    x = _images(0, 1)
    got = runner(input=x.numpy())["logits"]
    assert torch.equal(torch.from_numpy(got.copy()), _run_tflite(m.dst, x))


EXECUTED = ["s0_pte_fp16", "custom_pte", "s0_tflite_fp16", "custom_tflite"]
# s0 lowerings take seconds each: the quick tier keeps the small custom network, but for
# ExecuTorch, whose import and first lowering in a process alone take ~8 s.
SLOW = {"s0_pte_fp16", "custom_pte", "s0_tflite_fp16", "custom_mlpackage_fp16"}


def _cases(names):
    return [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in names]


@pytest.mark.parametrize("case", _cases(EXECUTED))
def test_runtime_output_matches_the_train_model(made, case):
    m = made(case)
    ext = CASES[case][3]
    batches = [1, 3] if "--batch" in CASES[case][4] else [1]
    assert m.summary["executed"] and all(c["passed"] for c in m.summary["runtime_checks"])
    assert m.summary["fused"] and m.summary["fusion_check"]["max_rel"] < 1e-4
    for i, b in enumerate(batches):
        x = _images(i, b)
        with torch.no_grad():
            ref = _train64(m)(x.double())
        if ext == ".pte":
            got = _run_pte(m.dst, x.half() if m.dtype == "fp16" else x)
        else:
            got = _run_tflite(m.dst, x)
        assert got.shape == ref.shape == (b, m.spec.num_classes)
        bound = 1e-3
        if m.dtype == "fp16":
            if ext == ".pte":  # every tensor float16, input and output too
                assert got.dtype == torch.float16
                rule = (lambda k, v: v.half().double())
            else:  # LiteRT's fp16 recipe: float16 weights, float32 biases
                assert got.dtype == torch.float32
                rule = (lambda k, v: v.half().double() if v.ndim >= 2 else v.float().double())
            bound += 4 * _fp16_cost(m, x, rule)
        assert _rel(ref, got) <= bound, (case, b, _rel(ref, got), bound)


@needs_ct
@pytest.mark.parametrize("case", _cases(["custom_mlpackage_fp16", "custom_mlpackage"]))
def test_mlpackage_holds_exactly_the_deploy_weights(made, case):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    m = made(case)
    assert not m.summary["executed"]
    assert m.summary["not_executed"] == "not executed: Core ML runs only on macOS"
    assert m.summary["runtime_checks"] == [] and m.summary["weights_check"]["passed"]
    model = ct.models.MLModel(m.dst, skip_model_load=True)
    spec = model.get_spec()
    prog = load(spec, spec.specificationVersion, model.weights_dir)  # coremltools' own reader
    consts = {op.outputs[0].name: op.val.val for op in prog.functions["main"].operations
              if op.op_type == "const"}
    expected = fold_by_hand(m.train_sd, m.spec)
    suffix = "_to_fp16" if m.dtype == "fp16" else ""
    for key, ref in expected.items():
        got = consts[key.replace(".", "_") + suffix]
        assert got.dtype == (np.float16 if m.dtype == "fp16" else np.float32), key
        assert got.shape == tuple(ref.shape), key
        # the package holds the fusion rounded once to its dtype
        tol = (2 ** -11 if m.dtype == "fp16" else 2 ** -23) * float(ref.abs().max()) + 1e-12
        assert float(np.abs(got.astype(np.float64) - ref.numpy()).max()) <= tol, key
    if case == "custom_mlpackage_fp16":
        assert m.summary["input"]["shape"][0] == "1..32"


def _tamper(path, tensor):
    """Add 1.0 to every value of ``tensor`` (float32) where its bytes lie in ``path``."""
    needle = tensor.detach().to(torch.float32).numpy().tobytes()
    with open(path, "rb") as fh:
        data = fh.read()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "the tensor's bytes are not unique"
    changed = (tensor.detach().to(torch.float32) + 1.0).numpy().tobytes()
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(changed)


@pytest.mark.parametrize("case", _cases(["custom_pte", "custom_tflite", "custom_mlpackage"]))
def test_verify_passes_then_fails_on_a_tampered_artifact(made, case, tmp_path):
    from mobileone_cli.fuse.fusion import fuse_state_dict

    m = made(case)
    args = ["verify", m.src, m.dst, "--input-size", str(SIZE), "--json"]
    if CASES[case][0] == "custom":
        args += ["--config", CUSTOM]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["passed"] and info["fusion"]["passed"]
    assert info["executed"] == (CASES[case][3] != ".mlpackage")
    target = m.dst
    if os.path.isdir(m.dst):  # tamper with a copy of the package's weight file
        import shutil

        target = str(tmp_path / os.path.basename(m.dst))
        shutil.copytree(m.dst, target)
    else:
        target = str(tmp_path / os.path.basename(m.dst))
        with open(m.dst, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
    block = "stage2.1.reparam_conv.bias"
    deploy = fuse_state_dict(m.train_sd, m.spec)
    weight_file = (os.path.join(target, "Data", "com.apple.CoreML", "weights", "weight.bin")
                   if os.path.isdir(target) else target)
    _tamper(weight_file, deploy[block])
    res = invoke(*(args[:2] + [target] + args[3:]))
    assert res.exit_code == 1, res.output
    info = json.loads(res.stdout)
    assert not info["passed"]
    if CASES[case][3] == ".mlpackage":
        assert info["weights_check"]["wrong"][0].startswith(block)
    else:
        assert not info["runtime_checks"][0]["passed"]


@pytest.mark.slow  # an ExecuTorch lowering
@needs_et
def test_check_fails_on_other_weights(made):
    """The runtime check can fail: the custom network's program against deploy weights with one
    block's bias moved by 5e-2."""
    from mobileone_cli.check.artifact import check_artifact
    from mobileone_cli.fuse.fusion import fuse_state_dict
    from mobileone_cli.runtimes import load_artifact

    m = made("custom_pte")
    deploy = fuse_state_dict(m.train_sd, m.spec)
    assert check_artifact(load_artifact(m.dst), deploy, m.spec, [(1, SIZE, SIZE)])[0].passed
    deploy["stage2.1.reparam_conv.bias"] = deploy["stage2.1.reparam_conv.bias"] + 5e-2
    c = check_artifact(load_artifact(m.dst), deploy, m.spec, [(1, SIZE, SIZE)])[0]
    assert not c.passed and c.metrics.max_rel > c.tolerance


def test_mean_pool_head_is_the_same_function():
    spec = get_arch("s0", 10)
    model = MobileOne(spec).eval()
    model.load_state_dict(random_state_dict(spec, seed=2), strict=True)
    head = MeanPoolHead(model)
    assert list(head.state_dict()) == list(model.state_dict())
    x = _images(0, 2)
    with torch.no_grad():
        assert torch.allclose(head(x), model(x), rtol=1e-6, atol=1e-6)
    headless = MobileOne(get_arch("s0", 0)).eval()
    with torch.no_grad():
        assert torch.equal(MeanPoolHead(headless)(x), headless(x))


@pytest.mark.parametrize("ext, module, extra", [(".pte", "executorch", "executorch"),
                                                (".tflite", "litert_torch", "litert"),
                                                (".mlpackage", "coremltools", "coreml")])
def test_missing_runtime_says_what_to_install(ext, module, extra, write_ckpt, run_cli, tmp_path,
                                              monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    out = tmp_path / f"m{ext}"
    res = run_cli("export", write_ckpt("s0"), str(out))
    assert res.exit_code == 2, res.output
    assert f"pip install 'mobileone-cli[{extra}]'" in res.stderr and "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.parametrize("args, msg", [
    (("m.pte", "--dynamic-size"), "fixed input size"),
    (("m.tflite", "--opset", "17"), "--opset applies to .onnx only"),
    (("m.pte", "--batch", "dynamic", "--max-batch", "8"), "above 16"),
    (("m.onnx", "--max-batch", "8"), "--max-batch bounds a dynamic batch"),
    (("m.mlpackage", "--coreml-target", "iOS9"), "choose one of"),
    (("m.tfl",), "OUT must end in one of"),
])
def test_bad_target_options_exit_2(args, msg, write_ckpt, run_cli, tmp_path):
    if args[0] == "m.pte" and "--max-batch" in args and not HAVE_ET:
        pytest.skip("needs executorch to get that far")
    if args[0] == "m.mlpackage" and not HAVE_CT:
        pytest.skip("needs coremltools to get that far")
    res = run_cli("export", write_ckpt("s0"), str(tmp_path / args[0]), *args[1:],
                  "--input-size", "64")
    assert res.exit_code == 2 and msg in res.stderr, res.output
    assert not (tmp_path / args[0]).exists()


def test_mlpackage_destination_rules(tmp_path):
    """A folder that is not a package is never replaced; an existing package needs force."""
    from mobileone_cli.io.write import check_destination

    plain = tmp_path / "x.mlpackage"
    plain.mkdir()
    with pytest.raises(BadInput, match="not a package"):
        check_destination(str(plain), force=True, package=True)
    (plain / "Manifest.json").write_text("{}")
    with pytest.raises(BadInput, match="already exists"):
        check_destination(str(plain), package=True)
    check_destination(str(plain), force=True, package=True)


@pytest.mark.slow  # each form exported to onnxruntime and timed there
def test_bench_in_a_runtime_as_docs_export_shows_it(run_cli, tiny_config,
                                                    bench_in_this_process):
    """`stats --bench --runtime R` whole but for the fresh process per form (its children run
    in this process, the job and result crossing as JSON as they would; tests/test_stats.py
    starts real ones): each form exported to R and timed there, and the text report whose lines
    docs/export.md shows for ExecuTorch (there the command is only parsed: s0's train form
    takes ExecuTorch a minute to lower).  The path and the lines are the same for every
    runtime (the JSON of a bench is runtime-independent, tests/test_stats.py); here with
    onnxruntime.  Each runtime's own part (export, load, run) is the runner test below,
    ExecuTorch's included."""
    if not _have("onnx", "onnxruntime"):
        pytest.skip("onnxruntime not installed")
    res = run_cli("stats", "--config", tiny_config, "--input-size", "32", "--bench", "--runtime",
                  "onnxruntime", "--runs", "3", "--warmup", "1", "--threads", "1")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    for shown in ("measured on this CPU in onnxruntime: batch 1, 1 thread(s)",
                  "speed-up from fusion:", "x (median latency, train / deploy)",
                  "each form exported to onnxruntime first (untimed); timed: the"):
        assert shown in text, (shown, res.stdout)


@pytest.mark.slow  # an export and a runtime session per form
@pytest.mark.parametrize("runtime, needed", [("onnxruntime", ("onnx", "onnxruntime")),
                                             ("executorch", ("executorch",)),
                                             ("litert", ("litert_torch", "ai_edge_litert"))])
def test_bench_runner_computes_each_form_in_the_runtime(runtime, needed, tmp_path):
    """What a bench process times (jobs.stats_bench._runner): the form exported to the runtime
    (ONNX with its exporter's options; ExecuTorch and LiteRT with the pooled head), loaded with
    the thread count asked, and its run computing that form's logits (fp32, 1e-4 of max |logit|
    from our model in float64), in this process."""
    if not _have(*needed):
        pytest.skip(f"{runtime} not installed")
    from mobileone_cli.fuse.fusion import fuse_state_dict
    from mobileone_cli.jobs.stats_bench import _runner
    from mobileone_cli.models.mobileone import build_model

    from .conftest import TWO_STAGE

    train_sd = random_state_dict(TWO_STAGE, seed=2)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for form, sd in (("train", train_sd), ("deploy", fuse_state_dict(train_sd, TWO_STAGE))):
        model = build_model(TWO_STAGE, form)
        model.load_state_dict(sd, strict=True)
        model.eval()
        (tmp_path / form).mkdir()
        forward, used = _runner(model, x, runtime, 1, str(tmp_path / form))
        assert used == 1, (form, used)
        with torch.no_grad():
            ref = model.double()(x.double())
        got = forward().double()
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max()), form


def test_bench_runtime_needs_bench_and_its_extra(run_cli, monkeypatch):
    res = run_cli("stats", "--arch", "s0", "--runtime", "executorch")
    assert res.exit_code == 2 and "--runtime applies to --bench" in res.stderr
    monkeypatch.setitem(sys.modules, "executorch", None)
    res = run_cli("stats", "--arch", "s0", "--bench", "--runtime", "executorch")
    assert res.exit_code == 2 and "pip install 'mobileone-cli[executorch]'" in res.stderr


@pytest.mark.parametrize("arch, stats", [
    ("s0", "random"), pytest.param("s0", "calibrated", marks=pytest.mark.slow),
    pytest.param("s4", "random", marks=pytest.mark.slow),
    pytest.param("s4", "calibrated", marks=pytest.mark.slow)])
def test_half_precision_bound_follows_the_network(arch, stats):
    """The fp16 bound passes honest fp16 arithmetic (PyTorch's own CPU fp16 kernels, another
    implementation than the emulation the bound is measured with) on calibrated AND
    random-statistics networks.  Where fp16 costs the network little (s0 with random
    statistics: ~1e-3), the bound stays tight enough to fail a block whose weights are 5% off
    (s4's saturated SE gates squash that change to 2e-3 of the output: no test there)."""
    from mobileone_cli.check.artifact import check_artifact
    from mobileone_cli.runtimes import Artifact

    spec = get_arch(arch)
    deploy = random_state_dict(spec, form="deploy", seed=5, stats=stats)
    half = MobileOne(spec, deploy=True).eval()
    half.load_state_dict({k: v.half().float() for k, v in deploy.items()}, strict=True)
    half = half.half()

    def run(x):
        with torch.no_grad():
            return half(x.half())

    art = Artifact(path="torch-fp16", runtime="torch fp16", kind="onnx", input_name="input",
                   input_shape=[1, 3, 32, 32], output_shape=[1, 1000], input_dtype="float16",
                   run=run, weight_dtype="float16")
    c = check_artifact(art, deploy, spec, [(1, 32, 32)], dtype="fp16")[0]
    assert c.passed, (c.metrics.max_rel, c.tolerance)
    assert c.metrics.max_rel > 0 and c.reference == "float64"
    # the emulated fp16 pass runs exactly where rtol alone does not decide
    assert (c.sensitivity is not None) == (c.metrics.max_rel > 1e-3)
    assert c.sensitivity is None or c.sensitivity.max_rel > 0
    if stats == "random" and arch == "s0":
        moved = dict(deploy)
        moved["stage1.1.reparam_conv.weight"] = moved["stage1.1.reparam_conv.weight"] * 1.05
        bad = check_artifact(art, moved, spec, [(1, 32, 32)], dtype="fp16")[0]
        assert not bad.passed, (bad.metrics.max_rel, bad.tolerance)


@pytest.mark.parametrize("stats", ["calibrated", "random"])
def test_fp32_check_decides_like_the_float64_rule(stats):
    """An fp32 artifact within rtol of our fp32 model passes without the float64 reference; any
    other goes to the float64 rule, computed here by hand: artifacts built just inside and just
    outside it, where the fp32 comparison alone cannot decide, get the float64 verdict."""
    from mobileone_cli.check.artifact import check_artifact
    from mobileone_cli.check.harness import seeded_inputs
    from mobileone_cli.runtimes import Artifact

    spec = get_arch("s0")
    deploy = random_state_dict(spec, form="deploy", seed=6, stats=stats)
    m64 = MobileOne(spec, deploy=True).double().eval()
    m64.load_state_dict({k: v.float().double() for k, v in deploy.items()}, strict=True)
    m32 = MobileOne(spec, deploy=True).eval()
    m32.load_state_dict(deploy, strict=True)
    x = seeded_inputs(0, 1, (32, 32))  # the check's own input at this shape
    with torch.no_grad():
        ref, y32 = m64(x.double()), m32(x).double()
    scale, gap = float(ref.abs().max()), (y32 - ref).abs()
    sens = float(gap.max())
    at = int(gap.argmax())
    direction = float(torch.sign(y32 - ref).view(-1)[at]) or 1.0

    def artifact(out):
        return Artifact(path="t", runtime="test", kind="onnx", input_name="input",
                        input_shape=[1, 3, 32, 32], output_shape=[1, 1000],
                        input_dtype="float32", run=lambda _x: out, weight_dtype="float32")

    def moved(delta):  # ref moved by delta at the output where fp32 strays most, the other way
        out = ref.clone()
        out.view(-1)[at] -= direction * delta
        return out

    full = 1e-3 * scale + 4 * sens  # the rule: rtol * max|ref| + 4 x the fp32 sensitivity
    for out, reference, passes in ((y32, "float32", True),
                                   (moved(1e-3 * scale + 2 * sens), "float64", True),
                                   (moved(1e-3 * scale + 6 * sens), "float64", False)):
        c = check_artifact(artifact(out), deploy, spec, [(1, 32, 32)])[0]
        assert c.reference == reference
        assert c.passed == passes == (float((out - ref).abs().max()) <= full), (stats, passes)
    assert 0 < sens < 1e-3 * scale  # the inside/outside cases above really differ
