"""`mobileone stats`, exact params and MACs/FLOPs, train vs deploy, and --bench.

Every count is checked against something that does not use mobileone_cli.arch.counting: the counts
of Apple's, mmpretrain's and timm's models at 224x224 (they agree) typed in again, parameter and
buffer sizes of the torch model (model.build_model on the meta device: shapes without memory),
torch's own FlopCounterMode, and a from-scratch counter of fvcore's rules written below.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from mobileone_cli.arch.specs import get_arch
from mobileone_cli.errors import BadInput
from mobileone_cli.rules.limits import parse_input_size
from mobileone_cli.arch.counting import arch_stats, conv_out
from mobileone_cli.models.mobileone import build_model
from mobileone_cli.models.synthetic import random_state_dict

from .conftest import ARCHS

# Published counts: arch -> (params train, params deploy, MACs train, MACs deploy) at 224x224, head included.
SECTION5 = {
    "s0": (5_293_272, 2_078_504, 1_051_935_232, 275_110_400),
    "s1": (4_825_192, 4_764_840, 830_062_080, 825_057_024),
    "s2": (7_884_648, 7_808_168, 1_304_027_392, 1_298_426_496),
    "s3": (10_170_600, 10_078_312, 1_902_112_768, 1_895_790_592),
    "s4": (14_951_248, 14_838_352, 2_986_802_432, 2_979_269_760),
}
# mmpretrain metafile "FLOPs" (fvcore counting, deploy form, backbone + pooling, head excluded).
MMPRETRAIN = {"s0": 274_136_576, "s1": 823_839_744, "s2": 1_296_478_848, "s3": 1_893_842_944,
              "s4": 2_979_222_528}
CELLS = [(a, f) for a in ARCHS for f in ("train", "deploy")]


def meta_model(arch, form, num_classes=None):
    """The torch model with shapes only (no memory, no compute): cheap at any size."""
    with torch.device("meta"):
        return build_model(arch, form, num_classes=num_classes).eval()


def section5(arch, form):
    p_tr, p_dp, m_tr, m_dp = SECTION5[arch]
    return (p_tr, m_tr) if form == "train" else (p_dp, m_dp)


# --- published counts, to the unit ---------------------------------------------------------------

@pytest.mark.parametrize("arch,form", CELLS)
def test_section5_exact(arch, form):
    params, macs = section5(arch, form)
    fc = arch_stats(get_arch(arch)).form(form)
    assert fc.total.params == params
    assert fc.total.macs == macs
    assert fc.value("macs") == macs and fc.value("flops") == 2 * macs
    # Per-part numbers add up to the totals (the table's rows and its total row agree).
    assert list(fc.parts) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert sum(c.params for c in fc.parts.values()) == params


@pytest.mark.parametrize("arch,form", CELLS)
def test_params_and_buffers_equal_the_torch_model(arch, form):
    """Learnable parameters and running statistics, counted by torch on the real module tree."""
    m = meta_model(arch, form)
    fc = arch_stats(get_arch(arch)).form(form)
    assert sum(p.numel() for p in m.parameters()) == fc.total.params == section5(arch, form)[0]
    assert sum(b.numel() for b in m.buffers()) == fc.total.buffers
    for part, stage in (("stem", m.stage0), ("stage1", m.stage1), ("stage4", m.stage4)):
        assert sum(p.numel() for p in stage.parameters()) == fc.parts[part].params


@pytest.mark.parametrize("arch", ARCHS)
def test_mmpretrain_convention_published_numbers(arch):
    assert arch_stats(get_arch(arch)).deploy.value("mmpretrain") == MMPRETRAIN[arch]


# --- torch.utils.flop_counter ----------------------------------------------------------------

def flop_counter(model, h, w, device="meta"):
    """(FlopCounterMode of one full forward, spatial size of the last feature map)."""
    x = torch.empty(1, 3, h, w, device=device) if device == "meta" else torch.randn(1, 3, h, w)
    seen = []
    hook = model.stage4.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    hook.remove()
    return fc, seen[0]

@pytest.mark.parametrize("arch,form", CELLS)
def test_flop_counter_mode_at_224(arch, form):
    """FlopCounterMode counts 2 x MACs of conv and linear layers, SE's 1x1 convs included (they
    are aten.convolution calls on the pooled map); it ignores BN, pooling, sigmoid and the
    products, exactly as our MACs do, so FLOPs == 2 x MACs with no remainder, the published counts included."""
    fc, _ = flop_counter(meta_model(arch, form), 224, 224)
    assert fc.get_total_flops() == 2 * section5(arch, form)[1]
    assert fc.get_total_flops() == arch_stats(get_arch(arch)).form(form).value("flops")




@pytest.mark.parametrize("arch,size", [("s0", (64, 64)), ("s4", (45, 99))])
def test_flop_counter_mode_real_tensors_small_and_non_square(arch, size, one_thread):
    """On real tensors at small and odd non-square sizes: per part, totals and the feature map
    size (which checks floor((H + 2p - k) / s) + 1 at every stride-2 block)."""
    stats = arch_stats(get_arch(arch), size)
    for form in ("train", "deploy"):
        model = build_model(arch, form).eval()
        fc, fmap = flop_counter(model, *size, device="cpu")
        assert fmap == stats.output_size
        assert fc.get_total_flops() == 2 * stats.form(form).total.macs
        per_module = fc.get_flop_counts()
        for part, module in (("stem", "stage0"), ("stage1", "stage1"), ("stage2", "stage2"),
                             ("stage3", "stage3"), ("stage4", "stage4"), ("head", "linear")):
            got = sum(per_module.get(f"MobileOne.{module}", {}).values())
            assert got == 2 * stats.form(form).parts[part].macs, (form, part)


def test_conv_out_formula():
    # Compared with torch's own convolution output sizes.
    for size in (1, 2, 7, 8, 45, 224, 225):
        for k, s in ((3, 2), (3, 1), (1, 1)):
            y = torch.nn.functional.conv2d(torch.zeros(1, 1, size, size, device="meta"),
                                           torch.zeros(1, 1, k, k, device="meta"), stride=s,
                                           padding=k // 2)
            assert conv_out(size, k, s, k // 2) == y.shape[-1]
    assert parse_input_size(224) == (224, 224) and parse_input_size("160x96") == (160, 96)
    assert parse_input_size("160 96") == parse_input_size((160, 96)) == (160, 96)
    for bad in ("0", "abc", "1x2x3", "99999999", True):
        with pytest.raises(BadInput):
            parse_input_size(bad)


# --- the mmpretrain convention, from fvcore's rules applied to a real trace ---------------------

class FvcoreRules(TorchDispatchMode):
    """fvcore/mmengine FlopAnalyzer rules, from scratch: conv and linear count MACs, eval-mode
    affine batch_norm 2 per input element, adaptive average pooling 1 per input element;
    elementwise ops (add, relu, sigmoid, mul) nothing."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("conv2d", "convolution"):
            w = args[1]
            self.total += out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
        elif name in ("linear", "addmm", "mm"):
            raise AssertionError("the head must not be traced in this convention")
        elif "batch_norm" in name:
            self.total += 2 * args[0].numel()
        elif name in ("mean", "adaptive_avg_pool2d", "_adaptive_avg_pool2d"):
            self.total += args[0].numel()
        return out


@pytest.mark.parametrize("arch,form", CELLS)
def test_mmpretrain_convention_matches_fvcore_rules(arch, form):
    model = meta_model(arch, form)
    with torch.no_grad(), FvcoreRules() as rules:
        model.gap(model.forward_features(torch.empty(1, 3, 224, 224, device="meta")))
    assert rules.total == arch_stats(get_arch(arch)).form(form).value("mmpretrain")
    if form == "deploy":
        assert rules.total == MMPRETRAIN[arch]


# --- the command ------------------------------------------------------------------------------

def test_cli_arch_json(run_cli):
    res = run_cli("stats", "--arch", "s2", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    p_tr, p_dp, m_tr, m_dp = SECTION5["s2"]
    assert (d["arch"], d["num_classes"], d["input_size"]) == ("s2", 1000, [224, 224])
    assert d["train"]["total"]["params"] == p_tr and d["deploy"]["total"]["params"] == p_dp
    assert d["train"]["total"]["macs"] == m_tr and d["deploy"]["total"]["macs"] == m_dp
    assert d["deploy"]["total"]["flops"] == 2 * m_dp
    assert d["deploy"]["total"]["mmpretrain"] == MMPRETRAIN["s2"]
    assert d["reduction"]["params"] == p_tr - p_dp and d["reduction"]["macs"] == m_tr - m_dp
    assert set(d["conventions"]) == {"macs", "flops", "mmpretrain"}


def test_cli_arch_table(run_cli):
    res = run_cli("stats", "--arch", "s0")
    assert res.exit_code == 0, res.output
    for n in SECTION5["s0"] + (MMPRETRAIN["s0"], 2 * SECTION5["s0"][3]):
        assert f"{n:,}" in res.stdout
    for word in ("stem", "stage1", "stage4", "head", "total", "mmpretrain"):
        assert word in res.stdout
    res = run_cli("stats", "--arch", "s0", "--convention", "flops")
    header = next(ln for ln in res.stdout.splitlines() if "params" in ln)
    assert "FLOPs" in header and f"{2 * SECTION5['s0'][2]:,}" in res.stdout


def test_cli_input_size_two_numbers_and_classes(run_cli):
    res = run_cli("stats", "--arch", "s3", "--input-size", "160", "96", "--num-classes", "0",
                  "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["input_size"] == [160, 96] and d["num_classes"] == 0
    ref = arch_stats(get_arch("s3", 0), (160, 96))
    assert d["deploy"]["total"]["macs"] == ref.deploy.total.macs
    model = meta_model("s3", "deploy", num_classes=0)
    assert d["deploy"]["total"]["params"] == sum(p.numel() for p in model.parameters())
    assert d["deploy"]["parts"]["head"]["params"] == 0


def _learnable(sd):
    """Elements of a state dict's learnable tensors, by key name (no schema involved)."""
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.numel() for k, v in sd.items() if not k.endswith(stats))


def test_cli_checkpoint_counts_real_tensors(run_cli, write_ckpt):
    path = write_ckpt("s0", form="train", layout="mmpretrain", num_classes=10)
    res = run_cli("stats", path, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    sd = torch.load(path, weights_only=True)
    c = d["checkpoint"]
    assert (d["arch"], d["num_classes"], c["form"], c["layout"]) == ("s0", 10, "train",
                                                                      "mmpretrain")
    assert c["tensors"] == len(sd) == 1323
    assert c["params"] == _learnable(sd) == c["analytic_params"] and c["matches_analytic"]
    assert c["buffers"] == sum(v.numel() for v in sd.values()) - _learnable(sd)
    # The published s0 with a 10-class head instead of the 1000-class one.
    assert c["params"] == SECTION5["s0"][0] - (1024 * 1000 + 1000) + (1024 * 10 + 10)


def test_cli_deploy_safetensors_with_prefix_and_extra_keys(run_cli, tmp_path):
    from safetensors.torch import save_file

    sd = random_state_dict(get_arch("s4"), form="deploy", layout="timm", seed=3,
                           stats="random")  # counts only: no calibration needed
    tensors = {"module." + k: v.contiguous() for k, v in sd.items()}
    tensors["module.extra.scale"] = torch.ones(7)
    path = str(tmp_path / "s4.safetensors")
    save_file(tensors, path)
    res = run_cli("stats", path, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    c = d["checkpoint"]
    assert (d["arch"], c["form"], c["layout"], c["prefix"]) == ("s4", "deploy", "timm", "module.")
    assert c["params"] == _learnable(sd) == SECTION5["s4"][1]
    assert c["other_elements"] == 7 and c["tensors"] == 137
    assert c["bytes"] == sum(v.numel() * 4 for v in tensors.values())
    assert d["train"]["total"]["params"] == SECTION5["s4"][0]  # released k for the train column
    res = run_cli("stats", path)
    assert "matches the analytic 14,838,352" in res.stdout


@pytest.mark.parametrize("args,message", [
    ((), "give a checkpoint file or --arch"),
    (("--arch", "s9"), "unknown MobileOne variant"),
    (("--arch", "s1", "--input-size", "0"), "--input-size 0x0: each side must be between"),
    (("--arch", "s1", "--input-size", "abc"), "--input-size 'abc': give one size"),
])
def test_cli_bad_input(run_cli, args, message):
    res = run_cli("stats", *args)
    assert res.exit_code == 2
    assert message in res.stderr and "Traceback" not in res.output


def test_cli_arch_must_match_checkpoint(run_cli, write_ckpt):
    path = write_ckpt("s1", form="train")
    res = run_cli("stats", path, "--arch", "s2")
    assert res.exit_code == 2 and "not s2 as --arch says" in res.stderr
    res = run_cli("stats", path, "--num-classes", "5")
    assert res.exit_code == 2 and "--num-classes" in res.stderr
    res = run_cli("stats", str(path) + ".missing")
    assert res.exit_code == 2 and "no such file" in res.stderr


# --- no torch where no tensor is needed --------------------------------------------------------

def _imports_torch(args):
    code = ("import sys\nfrom mobileone_cli.cli import cli\n"
            f"try:\n    cli.main({list(args)!r}, prog_name='mobileone')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="120"))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1] == "TORCH"


def test_stats_without_a_file_does_not_import_torch(tmp_path):
    assert not _imports_torch(["stats", "--arch", "s4"])
    assert not _imports_torch(["stats", "--arch", "s0", "--json", "--input-size", "128", "96"])
    from safetensors.torch import save_file

    path = str(tmp_path / "s2.safetensors")
    save_file(random_state_dict(get_arch("s2"), form="deploy", stats="random"), path)
    assert not _imports_torch(["stats", path])


# --- --bench: structure only, never timings ------------------------------------------------------

@pytest.mark.slow  # two fresh benchmark processes
def test_bench_structure(run_cli, tmp_path):
    svg = str(tmp_path / "stats.svg")
    res = run_cli("stats", "--arch", "s0", "--bench", "--input-size", "32", "--runs", "2",
                  "--warmup", "1", "--threads", "1", "--json", "--plot", svg)
    assert res.exit_code == 0, res.output
    b = json.loads(res.stdout)["bench"]
    assert (b["batch"], b["threads"], b["runs"], b["input_size"]) == (1, 1, 2, [32, 32])
    for form in ("train", "deploy"):
        f = b["forms"][form]
        assert len(f["times_ms"]) == 2 and f["median_ms"] > 0 and f["threads"] == 1
        assert f["min_ms"] <= f["median_ms"] <= f["max_ms"]
        assert f["memory_method"] in ("clear_refs", "ru_maxrss") and f["peak_delta"] >= 0
    assert b["speedup"] == pytest.approx(b["forms"]["train"]["median_ms"]
                                         / b["forms"]["deploy"]["median_ms"])
    # The picture's latency bars stand in the ratio of the medians (its other bars:
    # test_pictures.py; one bench run serves both).
    from .test_pictures import latency_bars

    lat = latency_bars(svg)
    medians = [b["forms"][f]["median_ms"] for f in ("train", "deploy")]
    assert [n for n, _ in lat] == ["train", "deploy"]
    assert abs(lat[1][1] / lat[0][1] - medians[1] / medians[0]) < 1e-4
    # Peak tensor memory, worked out by hand for s0 at 32x32 (the stem's 48 x 16 x 16 fp32
    # output, S = 49,152 bytes, is the largest activation; later ones are 4x smaller or less):
    # deploy: conv output and ReLU output alive together = 2S; train: the running sum, the
    # branch's conv output and its BN output = 3S.
    s_bytes = 48 * 16 * 16 * 4
    assert b["forms"]["deploy"]["peak_tensors"] == 2 * s_bytes
    assert b["forms"]["train"]["peak_tensors"] == 3 * s_bytes
    assert b["memory_ratio"] == pytest.approx(1.5)
    # The weights each process held: every tensor of the state dict of its form.
    for form in ("train", "deploy"):
        sd = random_state_dict(get_arch("s0"), form=form, stats="random")
        assert b["forms"][form]["weight_bytes"] == sum(v.numel() * v.element_size()
                                                       for v in sd.values())

def test_bench_rendering(capsys):
    from mobileone_cli.jobs.stats_bench import BenchResult, FormTiming
    from mobileone_cli.render.stats import render_stats
    from mobileone_cli.jobs.stats import stats_for_arch

    report = stats_for_arch(get_arch("s1"), 64)
    report.bench = BenchResult(arch="s1", input_size=(64, 64), batch=2, threads=3, warmup=1,
                               runs=2)
    for form, t in (("train", 30.0), ("deploy", 10.0)):
        report.bench.forms[form] = FormTiming(
            form=form, times_ms=[t, t], median_ms=t, min_ms=t, max_ms=t, rss_before=1000,
            peak_delta=int(t * 1e6), peak_tensors=int(t * 1e5), weight_bytes=10, threads=3,
            memory_method="clear_refs")
    render_stats(report)
    out = capsys.readouterr().out
    assert "speed-up from fusion: 3.00x" in out and "train / deploy: 3.00" in out
    assert "batch 2, 3 thread(s)" in out


def test_cli_trust_file_flag_reads_the_same_counts(run_cli, write_ckpt):
    path = write_ckpt("s1", form="deploy", layout="apple")
    safe = json.loads(run_cli("stats", path, "--json").stdout)
    trusted = json.loads(run_cli("--trust-file", path, "stats", path, "--json").stdout)
    assert safe["checkpoint"]["params"] == trusted["checkpoint"]["params"] == SECTION5["s1"][1]
