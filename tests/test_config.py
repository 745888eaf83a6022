"""YAML model configs (`--config FILE`).

The s0..s4 configs below are typed in from the published architecture (apple/ml-mobileone and
mmpretrain's arch settings: width multipliers, k, SE pairs) in mmpretrain's own arch-dict names,
so a config that loads to the built-in spec, with the same keys and shapes in every layout and
form, is checked against an independent source.  Key counts are those of the three libraries'
state dicts.
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
from mobileone_cli.arch.config import parse_config
from mobileone_cli.io.configfile import load_config
from mobileone_cli.rules.limits import MAX_STAGES
from mobileone_cli.errors import BadInput
from mobileone_cli.arch.layouts import schema
from mobileone_cli.models.synthetic import random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "custom_3stage.yaml")

# The published architecture: width multipliers, k, SE pairs; train / deploy key counts.
REFERENCE = {
    "s0": ([0.75, 1.0, 1.0, 2.0], 4, [0, 0, 0, 0], 1323, 88),
    "s1": ([1.5, 1.5, 2.0, 2.5], 1, [0, 0, 0, 0], 562, 88),
    "s2": ([1.5, 2.0, 2.5, 4.0], 1, [0, 0, 0, 0], 562, 88),
    "s3": ([2.0, 2.5, 3.0, 4.0], 1, [0, 0, 0, 0], 562, 88),
    "s4": ([3.0, 3.5, 3.5, 4.0], 1, [0, 0, 5, 1], 610, 136),
}
LAST_WIDTH = {"s0": 1024, "s1": 1280, "s2": 2048, "s3": 2048, "s4": 2048}


def write(tmp_path, text: str, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def mmpretrain_yaml(arch: str) -> str:
    factors, k, se, _, _ = REFERENCE[arch]
    return f"""
model:
  type: ImageClassifier
  backbone:
    type: MobileOne
    arch:
      num_blocks: [2, 8, 10, 1]
      width_factor: {factors}
      num_conv_branches: {[k] * 4}
      num_se_blocks: {se}
    out_indices: [3]
    frozen_stages: -1
  neck: {{type: GlobalAveragePooling}}
  head:
    type: LinearClsHead
    num_classes: 1000
    in_channels: {LAST_WIDTH[arch]}
    loss: {{type: CrossEntropyLoss, loss_weight: 1.0}}
    topk: [1, 5]
"""


@pytest.mark.parametrize("arch", list(REFERENCE))
def test_yaml_reproduces_builtin_exactly(arch, tmp_path):
    spec = load_config(write(tmp_path, mmpretrain_yaml(arch)))
    builtin = get_arch(arch)
    assert spec == builtin  # name included: an unmodified built-in keeps its name
    _, _, _, n_train, n_deploy = REFERENCE[arch]
    for layout in ("apple", "mmpretrain", "timm"):
        for form, count in (("train", n_train), ("deploy", n_deploy)):
            ours = [(e.key, e.shape) for e in schema(spec, layout, form)]
            assert ours == [(e.key, e.shape) for e in schema(builtin, layout, form)]
            assert len(ours) == count
    # The same variant named directly, and through our own field names.
    assert load_config(write(tmp_path, f"backbone: {{type: MobileOne, arch: {arch}}}\n",
                             "named.yaml")) == builtin
    ours = builtin.to_dict()
    ours.pop("name")
    assert parse_config({"backbone": {"arch": ours}}) == builtin


def test_shipped_examples_load():
    s0 = load_config(os.path.join(ROOT, "examples", "mobileone_s0_mmpretrain.yaml"))
    assert s0 == get_arch("s0")
    s1 = load_config(os.path.join(ROOT, "examples", "s1_ten_classes.yaml"))
    assert (s1.name, s1.conv_branches, s1.num_classes) == ("s1_k2_10cls", (2, 2, 2, 2), 10)
    assert s1.widths == get_arch("s1").widths
    custom = load_config(EXAMPLE)
    assert custom.name == "custom_3stage"
    assert (custom.widths, custom.blocks, custom.conv_branches, custom.se_blocks) == (
        (32, 64, 128), (1, 2, 2), (2, 2, 2), (0, 0, 1))
    assert custom.num_classes == 10 and custom.stem_channels == 32


def test_overrides_on_a_builtin(tmp_path):
    spec = load_config(write(tmp_path, """
backbone:
  arch: {base: s4, se_blocks: [0, 0, 2, 1], kernel_size: 5}
  in_channels: 1
head: null
""", "s4_variant.yaml"))
    assert spec.name == "s4_variant"  # changed backbone: named after the file
    assert spec.se_blocks == (0, 0, 2, 1) and spec.kernel_size == 5 and spec.in_channels == 1
    assert spec.num_classes == 0 and spec.widths == get_arch("s4").widths


def test_custom_config_converts_and_verifies(tmp_path, run_cli):
    """3 stages, k = 2, SE in the last stage: convert with --config, outputs checked against
    the train-form model in eval mode."""
    from mobileone_cli.models.mobileone import MobileOne

    spec = load_config(EXAMPLE)
    src, dst = str(tmp_path / "c.pth"), str(tmp_path / "c_deploy.pth")
    train_sd = random_state_dict(spec, layout="timm", seed=9)
    save_checkpoint(src, train_sd)
    res = run_cli("convert", src, dst, "--config", EXAMPLE, "--to", "apple", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["arch"] == "custom_3stage" and summary["num_classes"] == 10
    out = torch.load(dst, weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in out.items()] == [
        (e.key, e.shape) for e in schema(spec, "apple", "deploy")]
    assert any(".se." in k for k in out)  # SE of the last stage survived

    train = MobileOne(spec)
    train.load_state_dict(random_state_dict(spec, layout="apple", seed=9), strict=True)
    deploy = MobileOne(spec, deploy=True)
    deploy.load_state_dict(out, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, got = train.eval()(x), deploy.eval()(x)
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-5


def test_custom_config_verify(tmp_path, run_cli):
    """verify --config: the configured name in the report, equal files pass, a perturbed one
    fails, a config that does not describe the files is bad input."""
    spec = load_config(EXAMPLE)
    src, dst = str(tmp_path / "c.pth"), str(tmp_path / "c_deploy.pth")
    save_checkpoint(src, random_state_dict(spec, seed=7))
    assert run_cli("convert", src, dst, "--config", EXAMPLE).exit_code == 0
    res = run_cli("verify", src, dst, "--config", EXAMPLE, "--input-size", "64", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["passed"] and report["arch"] == "custom_3stage"
    bad = torch.load(dst, weights_only=True)
    bad["stage3.3.reparam_conv.bias"] = bad["stage3.3.reparam_conv.bias"] + 0.5
    save_checkpoint(str(tmp_path / "bad.pth"), bad)
    res = run_cli("verify", src, str(tmp_path / "bad.pth"), "--config", EXAMPLE,
                  "--input-size", "64")
    assert res.exit_code == 1, res.output
    res = run_cli("verify", src, "--config", os.path.join(ROOT, "examples", "s1_ten_classes.yaml"),
                  "--input-size", "64")
    assert res.exit_code == 2 and "widths: expected" in res.stderr


def test_custom_config_stats(tmp_path, run_cli):
    """stats --config: totals equal parameter counts of our model and torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from mobileone_cli.models.mobileone import MobileOne

    spec = load_config(EXAMPLE)
    res = run_cli("stats", "--config", EXAMPLE, "--input-size", "64", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["arch"] == "custom_3stage" and report["num_classes"] == 10
    for form, deploy in (("train", False), ("deploy", True)):
        model = MobileOne(spec, deploy=deploy).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        assert report[form]["total"]["params"] == sum(p.numel() for p in model.parameters())
        assert report[form]["total"]["flops"] == counter.get_total_flops()
    # With a checkpoint the config is checked against the file, like convert does.
    src = str(tmp_path / "c.pth")
    save_checkpoint(src, random_state_dict(spec, seed=5))
    res = run_cli("stats", src, "--config", EXAMPLE, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["arch"] == "custom_3stage"
    res = run_cli("stats", src, "--config", os.path.join(ROOT, "examples", "s1_ten_classes.yaml"))
    assert res.exit_code == 2 and "widths: expected" in res.stderr


def test_custom_config_exports_to_onnx(tmp_path, run_cli):
    """export --config: onnxruntime's logits equal the train-form model's in eval mode."""
    ort = pytest.importorskip("onnxruntime")
    from mobileone_cli.models.mobileone import MobileOne

    spec = load_config(EXAMPLE)
    src, dst = str(tmp_path / "c.pth"), str(tmp_path / "c.onnx")
    train_sd = random_state_dict(spec, seed=12)
    save_checkpoint(src, train_sd)
    res = run_cli("export", src, dst, "--config", EXAMPLE, "--input-size", "64", "64",
                  "--exporter", "torchscript", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["arch"] == "custom_3stage"
    train = MobileOne(spec)
    train.load_state_dict(train_sd, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = train.eval()(x)
    session = ort.InferenceSession(dst, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-5
    res = run_cli("export", src, str(tmp_path / "x.onnx"), "--config",
                  os.path.join(ROOT, "examples", "s1_ten_classes.yaml"))
    assert res.exit_code == 2 and "blocks: expected" in res.stderr


def test_demo_with_a_config(tmp_path, run_cli):
    from mobileone_cli.models.mobileone import MobileOne

    res = run_cli("demo", "--config", EXAMPLE, "--dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "custom_3stage" in res.stdout
    spec = load_config(EXAMPLE)
    train, deploy = MobileOne(spec), MobileOne(spec, deploy=True)
    train.load_state_dict(torch.load(tmp_path / "mobileone_custom_3stage_unfused.pth.tar",
                                     weights_only=True), strict=True)
    deploy.load_state_dict(torch.load(tmp_path / "mobileone_custom_3stage.pth",
                                      weights_only=True), strict=True)
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref, got = train.eval()(x), deploy.eval()(x)
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-5


def test_six_stage_config_converts(tmp_path, run_cli):
    cfg = write(tmp_path, """
backbone:
  arch:
    stem_channels: 8
    widths: [8, 8, 16, 16, 24, 32]
    blocks: [1, 1, 1, 1, 1, 1]
    conv_branches: 3
head: {num_classes: 5}
""", "six.yaml")
    spec = load_config(cfg)
    assert spec.num_stages == MAX_STAGES
    src, dst = str(tmp_path / "six.pth"), str(tmp_path / "six_d.pth")
    save_checkpoint(src, random_state_dict(spec, seed=1))
    res = run_cli("convert", src, dst, "--config", cfg)
    assert res.exit_code == 0, res.output
    assert "six" in res.stdout and "max rel diff" in res.stdout


def test_se_ratio_from_the_config_is_detected(tmp_path, run_cli):
    """mmpretrain's se_cfg ratio 4 (SE width C / 4): the checkpoint is detected with it too."""
    from mobileone_cli.models.mobileone import MobileOne

    cfg = write(tmp_path, """
backbone:
  arch: {stem_channels: 16, widths: [16, 32], blocks: [1, 2], conv_branches: 1,
         se_blocks: [0, 2]}
  se_cfg: {ratio: 4}
head: {num_classes: 3}
""", "se4.yaml")
    spec = load_config(cfg)
    assert spec.se_ratio == 0.25
    src, dst = str(tmp_path / "se4.pth"), str(tmp_path / "se4_d.pth")
    train_sd = random_state_dict(spec, seed=3)
    assert tuple(train_sd["stage2.3.se.reduce.weight"].shape) == (8, 32, 1, 1)  # 32 / 4
    save_checkpoint(src, train_sd)
    res = run_cli("convert", src, dst, "--config", cfg)
    assert res.exit_code == 0, res.output
    train, deploy = MobileOne(spec), MobileOne(spec, deploy=True)
    train.load_state_dict(train_sd, strict=True)
    deploy.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = train.eval()(x), deploy.eval()(x)
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-5


def test_config_that_does_not_match_the_checkpoint(tmp_path, run_cli):
    spec = load_config(EXAMPLE)
    src, dst = str(tmp_path / "c.pth"), str(tmp_path / "d.pth")
    save_checkpoint(src, random_state_dict(spec, seed=2))
    other = write(tmp_path, """
backbone:
  arch: {stem_channels: 32, widths: [32, 64, 96], blocks: [1, 2, 2], conv_branches: 2,
         se_blocks: [0, 0, 1]}
head: {num_classes: 10}
""", "other.yaml")
    res = run_cli("convert", src, dst, "--config", other)
    assert res.exit_code == 2
    assert "widths: expected [32, 64, 96], checkpoint has [32, 64, 128]" in res.stderr
    assert "--config" in res.stderr and not os.path.exists(dst)
    heads = write(tmp_path, "name: h\nbackbone: {arch: {base: s0}}\nhead: {num_classes: 7}\n",
                  "h.yaml")
    save_checkpoint(src, random_state_dict(get_arch("s0", 10), seed=2), force=True)
    res = run_cli("convert", src, dst, "--config", heads)
    assert res.exit_code == 2 and "num_classes: expected 7, checkpoint has 10" in res.stderr
    res = run_cli("convert", src, dst, "--config", heads, "--arch", "s0")
    assert res.exit_code == 2 and "--arch or --config, not both" in res.stderr


BAD = [
    ("backbone: {arch: s0, typo: 1}\n", "backbone.typo: unknown field"),
    ("backbone: {arch: {base: s0, widht: [1]}}\n", "backbone.arch.widht: unknown field"),
    ("modle: {backbone: {arch: s0}}\n", "modle: unknown field"),
    ("backbone: {arch: {base: s0, widths: abc}}\n", "backbone.arch.widths: must be a list"),
    ("backbone: {arch: {base: s0, widths: [1, 2, x, 4]}}\n",
     "backbone.arch.widths[2]: must be an integer"),
    ("backbone: {arch: {base: s0, blocks: [2, 8, 10]}}\n",
     "backbone.arch.blocks: has 3 entries, but widths has 4"),
    ("backbone: {arch: s0}\nhead: {num_classes: 10, in_channels: 512}\n",
     "head.in_channels: is 512, but the last stage has 1024 channels"),
    ("backbone: {arch: {base: s0, widths: [48, -128, 256, 1024]}}\n",
     "backbone.arch.widths[1]: must be >= 1, not -128"),
    ("backbone: {arch: s0}\nhead: {num_classes: -1}\n", "head.num_classes: must be >= 0"),
    ("backbone: {arch: {base: s0, se_blocks: [0, 0, 11, 0]}}\n",
     "backbone.arch.se_blocks[2]: 11 SE blocks but stage 3 has only 10 blocks"),
    ("backbone: {type: ResNet, arch: s0}\n", "backbone.type: must be MobileOne"),
    ("backbone: {arch: [s0\n", "unreadable YAML at line"),
    ("backbone: {arch: s9}\n", "backbone.arch: unknown built-in variant 's9'"),
    ("head: {num_classes: 3}\n", "backbone: missing"),
    ("- a\n- b\n", "(top level): must be a mapping, not a list"),
    ("", "empty config"),
    ("backbone: {arch: {widths: [8], blocks: [1]}}\n", "backbone.arch.conv_branches: missing"),
    ("backbone: {arch: {width_factor: [1, 1, 1, 1, 1], num_blocks: [1, 1, 1, 1, 1], "
     "num_conv_branches: [1, 1, 1, 1, 1]}}\n", "backbone.arch.width_factor: has 5 entries"),
    ("backbone: {arch: {base: s0, num_blocks: [1, 1, 1, 1], blocks: [1, 1, 1, 1]}}\n",
     "backbone.arch.num_blocks: given together with 'blocks'"),
    ("backbone: {arch: {base: s0, kernel_size: 4}}\n", "backbone.arch.kernel_size: must be odd"),
    ("backbone: {arch: {widths: [8, 8, 8, 8, 8, 8, 8], blocks: [1, 1, 1, 1, 1, 1, 1], "
     "conv_branches: 1}}\n", "has 7 entries; a MobileOne has at most 6 stages"),
    ("backbone: {arch: {base: s0, conv_branches: true}}\n",
     "backbone.arch.conv_branches: must be a list"),
    ("backbone: {arch: {base: s0, stem_channels: 1.5}}\n",
     "backbone.arch.stem_channels: must be an integer"),
    ("backbone: {arch: {widths: [8], blocks: [1], conv_branches: 1, se_blocks: [1]}}\n",
     "stage 1: an SE block on 8 channels"),
    ("backbone: {arch: {base: s0, num_classes: 5}}\nhead: {num_classes: 10}\n",
     "head.num_classes: is 10, but backbone.arch.num_classes is 5"),
    ("model: {type: Detector, backbone: {arch: s0}}\n", "model.type: must be ImageClassifier"),
    ("backbone: {arch: s0, act_cfg: {type: GELU}}\n", "backbone.act_cfg.type: only ReLU"),
    ("backbone: {arch: s0}\nneck: {type: Flatten}\n", "neck.type: must be GlobalAveragePooling"),
    ("backbone: {arch: s0}\nhead: {type: StackedLinearClsHead}\n",
     "head.type: must be LinearClsHead"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m[:40] for _, m in BAD])
def test_invalid_configs_name_the_field(text, message, tmp_path):
    with pytest.raises(BadInput) as info:
        load_config(write(tmp_path, text))
    assert message in info.value.message, info.value.message
    assert "\n" not in info.value.message


def test_did_you_mean_and_cli_error_is_one_line(tmp_path, run_cli):
    cfg = write(tmp_path, "backbone: {arch: {base: s0, width: [1, 2, 3, 4]}}\n")
    with pytest.raises(BadInput) as info:
        load_config(cfg)
    assert info.value.hint == "did you mean 'widths'?"
    src = str(tmp_path / "s.pth")
    save_checkpoint(src, random_state_dict(get_arch("s1"), seed=0))
    res = run_cli("convert", src, str(tmp_path / "d.pth"), "--config", cfg)
    assert res.exit_code == 2
    assert res.stderr.splitlines()[0].startswith("error: ") and "Traceback" not in res.output
    for missing in (str(tmp_path / "nope.yaml"), str(tmp_path)):
        res = run_cli("convert", src, str(tmp_path / "d.pth"), "--config", missing)
        assert res.exit_code == 2, res.output
    assert not os.path.exists(tmp_path / "d.pth")


def test_config_module_needs_no_torch():
    code = ("import sys; from mobileone_cli.io.configfile import load_config; "
            f"s = load_config({EXAMPLE!r}); assert s.widths == (32, 64, 128); "
            "assert 'torch' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_inspect_with_config_stays_torch_free(tmp_path):
    """inspect --config of a .safetensors file: the config's name, checked, without torch
    (--no-health: the eps sensitivity of a train-form file runs the torch fusion)."""
    from safetensors.torch import save_file

    spec = load_config(EXAMPLE)
    path = str(tmp_path / "c.safetensors")
    save_file(random_state_dict(spec, layout="mmpretrain", seed=3), path)
    code = ("import sys, json; from click.testing import CliRunner; "
            "from mobileone_cli.cli import cli; "
            f"r = CliRunner().invoke(cli, ['inspect', {path!r}, '--config', {EXAMPLE!r}, "
            "'--json', '--no-health']); assert r.exit_code == 0, r.output; "
            "d = json.loads(r.output); "
            "assert d['variant'] == 'custom_3stage', d['variant']; "
            "assert 'torch' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr
    from click.testing import CliRunner

    from mobileone_cli.cli import cli

    other = os.path.join(ROOT, "examples", "s1_ten_classes.yaml")
    res = CliRunner().invoke(cli, ["inspect", path, "--config", other])
    assert res.exit_code == 2 and "widths: expected" in res.output
