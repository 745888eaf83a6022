"""Shared fixtures and the small networks of the tests (each name means one network):
synthetic checkpoints with random weights AND random BN statistics."""
from __future__ import annotations

import functools
import os
import re

import pytest
from click.testing import CliRunner

from mobileone_cli.arch.specs import ArchSpec, get_arch
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.cli import cli

# torch is imported where it is used: pytest's main process under xdist loads this module
# before it starts the workers and needs none of it (~1.2 s off every run's start).

ARCHS = ("s0", "s1", "s2", "s3", "s4")
# Three stages, small enough to fuse and check in milliseconds, with every kind of block: k = 1..3,
# scale and identity branches, stride 2, SE, a head.
TINY = ArchSpec(name="tiny", stem_channels=8, widths=(8, 16, 24), blocks=(1, 2, 1),
                conv_branches=(2, 1, 3), se_blocks=(0, 1, 1), num_classes=10)
# The smallest with the train form's every branch (k = 1 and 2, scale, identity, SE): for
# the runtimes' own lowering of a train form, which costs by the node (ExecuTorch: 4 s, TINY 5 s).
TWO_STAGE = ArchSpec(name="two_stage", stem_channels=8, widths=(8, 16), blocks=(1, 2),
                     conv_branches=(1, 2), se_blocks=(0, 1), num_classes=10)
# Four stages like the released variants (k = 2, SE in the last two stages), still small; named
# "custom", as detection names a network that is no released variant.
FOUR_STAGE = ArchSpec(name="custom", stem_channels=16, widths=(16, 32, 32, 64),
                      blocks=(1, 2, 1, 1), conv_branches=(2, 2, 2, 2), se_blocks=(0, 0, 1, 1),
                      num_classes=10)


def recalibrated(arch, sd, seed, size):
    """``sd`` with its running statistics measured again by train-mode passes (4 batches of 8
    seeded size x size images), as training would leave them after a change of its weights."""
    import torch

    from mobileone_cli.models.mobileone import MobileOne

    m = MobileOne(arch)
    m.load_state_dict(sd)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(8, 3, size, size, generator=g))
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def first_quick(*values):
    """Parametrize values: the first in the quick tier, the others marked slow (the full suite
    runs them all; daily work keeps one case of the path).  A tuple is one case's values for
    several names."""
    def slow(v):
        return pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.slow)

    return [values[0], *(slow(v) for v in values[1:])]


def invoke(*args: str):
    """Run the CLI in-process; the result has exit_code, stdout, stderr, output."""
    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def run_cli():
    return invoke


@pytest.fixture
def tiny_sd():
    """A train-form Apple-layout state dict of TINY."""
    from mobileone_cli.models.synthetic import random_state_dict

    return random_state_dict(TINY, seed=1)


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread than on several busy ones (modules that check
    many tiny networks use it: ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def bench_in_this_process(monkeypatch):
    """``stats --bench`` with its per-form children (``python -m mobileone_cli.jobs.stats_bench
    FORM``) run in this process: the job and the result cross as JSON on stdin/stdout as they
    would, only without a fresh interpreter (~2.5 s each).  For tests of what a bench reports;
    tests/test_stats.py runs the real processes."""
    import contextlib
    import io
    import subprocess
    import sys

    import torch

    from mobileone_cli.jobs import stats_bench

    assert stats_bench.subprocess is subprocess
    real_run = subprocess.run

    def run(argv, *args, input=None, **kwargs):
        if list(argv[1:3]) != ["-m", "mobileone_cli.jobs.stats_bench"]:
            return real_run(argv, *args, input=input, **kwargs)
        out, threads = io.StringIO(), torch.get_num_threads()
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        try:
            with contextlib.redirect_stdout(out):
                code = stats_bench._main(argv[3:])
        finally:
            torch.set_num_threads(threads)
        return subprocess.CompletedProcess(argv, code, out.getvalue(), "")

    monkeypatch.setattr(subprocess, "run", run)  # the module stats_bench calls it from


def docs_module(name: str):
    """docs/NAME.py as the module ``docs_NAME`` (docs/ is no package), loaded once per process:
    docs/examples.py finds its docs_warm there too."""
    import importlib.util
    import sys

    module = sys.modules.get(f"docs_{name}")
    if module is None:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                            f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"docs_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"docs_{name}"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")  # one server per worker, whichever modules it runs
def warm_cli():
    """The argv prefix that runs ``mobileone ARGS`` as a fork of a server that has imported
    torch and the package (docs/warm.py --imports-only): a process of its own with the
    caller's stdin/stdout/stderr, folder and environment, whose exit status is the client's,
    without a fresh interpreter's ~1.3 s start.  For tests of what a command does with its
    streams; a test about a fresh interpreter (imports, memory, signals to its pid) starts one."""
    import shutil
    import sys
    import tempfile

    warm = docs_module("warm")
    folder = tempfile.mkdtemp(prefix="mobileone-warm-")  # a short path: a socket's is bounded
    sock = os.path.join(folder, "s")
    server = warm.start_server(sock, runtimes=False)
    try:
        assert server is not None, "docs/warm.py --imports-only did not start"
        yield [sys.executable, warm.__file__, sock]
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


@functools.lru_cache(maxsize=8)
def state_dict_of(arch, form, layout, seed, dtype, num_classes):
    """random_state_dict is deterministic and costs up to a second (calibration passes): a
    process makes each one once.  Callers get a copy of the dict and only read the tensors."""
    from mobileone_cli.models.synthetic import random_state_dict

    return random_state_dict(get_arch(arch, num_classes), form=form, layout=layout, seed=seed,
                             dtype=dtype)


@pytest.fixture
def write_ckpt(tmp_path):
    """write_ckpt(arch, form='train', layout='apple', name=None, seed=0, **kw) -> path."""

    import torch

    def _write(arch="s0", form="train", layout="apple", name=None, seed=0, wrap=None,
               dtype=torch.float32, num_classes=None):
        sd = dict(state_dict_of(arch, form, layout, seed, dtype, num_classes))
        path = os.path.join(tmp_path, name or f"{arch}_{layout}_{form}.pth")
        if wrap is not None:
            obj = wrap(sd)
            torch.save(obj, path)
        else:
            save_checkpoint(path, sd, force=True)
        return path

    return _write


LAYOUTS = ("apple", "mmpretrain", "timm")
# The published architecture (apple/ml-mobileone): stem C, stage widths, SE, conv branches k of the
# stages (the stem always has k = 1).
REF = {"s0": (48, (48, 128, 256, 1024), False, 4), "s1": (64, (96, 192, 512, 1280), False, 1),
       "s2": (64, (96, 256, 640, 2048), False, 1), "s3": (64, (128, 320, 768, 2048), False, 1),
       "s4": (64, (192, 448, 896, 2048), True, 1)}
# Key counts train / deploy of the three libraries' state dicts.
COUNTS = {"s0": (1323, 88), "s1": (562, 88), "s2": (562, 88), "s3": (562, 88), "s4": (610, 136)}

# One row per part: Apple's name -> (mmpretrain's, timm's).
PARTS = [
    (r"rbr_conv\.(\d+)\.conv\.", (r"branch_conv_list.\1.conv.", r"conv_kxk.\1.conv.")),
    (r"rbr_conv\.(\d+)\.bn\.", (r"branch_conv_list.\1.norm.", r"conv_kxk.\1.bn.")),
    (r"rbr_scale\.conv\.", ("branch_scale.conv.", "conv_scale.conv.")),
    (r"rbr_scale\.bn\.", ("branch_scale.norm.", "conv_scale.bn.")),
    (r"rbr_skip\.", ("branch_norm.", "identity.")),
    (r"se\.reduce\.", ("se.conv1.conv.", "attn.fc1.")),
    (r"se\.expand\.", ("se.conv2.conv.", "attn.fc2.")),
    (r"reparam_conv\.", ("branch_reparam.", "reparam_conv.")),
]


def translate(key: str, layout: str) -> str:
    """An Apple key in ``layout``, by mmpretrain's and timm's module names (no mobileone_cli code
    involved)."""
    if layout == "apple":
        return key
    col = {"mmpretrain": 0, "timm": 1}[layout]
    if key.startswith("linear."):
        return "head.fc." + key[len("linear."):]
    m = re.match(r"stage0\.(.*)$", key)
    if m:
        block, rest = ("backbone.stage0." if col == 0 else "stem."), m.group(1)
    else:
        m = re.match(r"stage(\d)\.(\d+)\.(.*)$", key)
        s, j, rest = int(m.group(1)), m.group(2), m.group(3)
        block = f"backbone.stage{s}.{j}." if col == 0 else f"stages.{s - 1}.{j}."
    for pat, repl in PARTS:
        new, n = re.subn("^" + pat, repl[col], rest)
        if n:
            return block + new
    raise AssertionError(f"no rule for {key}")


def as_layout(sd, layout):
    return {translate(k, layout): v for k, v in sd.items()}


def expected_deploy_keys(arch: str):
    """[(key, shape)] of Apple's mobileone(variant, inference_mode=True), from the reference."""
    stem, widths, se, _ = REF[arch]
    out = [("stage0.reparam_conv.weight", (stem, 3, 3, 3)), ("stage0.reparam_conv.bias", (stem,))]
    c = stem
    for s, (w, pairs) in enumerate(zip(widths, (2, 8, 10, 1)), start=1):
        for p in range(pairs):
            has_se = se and ((s == 3 and p >= 5) or s == 4)
            for j, (cin, cout, groups, k) in ((2 * p, (c, c, c, 3)), (2 * p + 1, (c, w, 1, 1))):
                pre = f"stage{s}.{j}"
                if has_se:
                    r = int(cout * 0.0625)
                    out += [(f"{pre}.se.reduce.weight", (r, cout, 1, 1)),
                            (f"{pre}.se.reduce.bias", (r,)),
                            (f"{pre}.se.expand.weight", (cout, r, 1, 1)),
                            (f"{pre}.se.expand.bias", (cout,))]
                out += [(f"{pre}.reparam_conv.weight", (cout, cin // groups, k, k)),
                        (f"{pre}.reparam_conv.bias", (cout,))]
            c = w
    out += [("linear.weight", (1000, widths[-1])), ("linear.bias", (1000,))]
    return out


def fold_by_hand(sd, arch, eps=1e-5):
    """Apple-layout deploy tensors in float64 by the paper's formulas, written here from scratch
    (an independent reference for the tool's fusion)."""
    import torch

    out = {}
    for b in arch.block_specs():
        p = b.name
        k = b.kernel_size
        cpg = b.in_channels // b.groups
        w_sum = torch.zeros(b.out_channels, cpg, k, k, dtype=torch.float64)
        b_sum = torch.zeros(b.out_channels, dtype=torch.float64)

        def bn(prefix):
            g = sd[prefix + "weight"].double()
            std = (sd[prefix + "running_var"].double() + eps).sqrt()
            return g / std, sd[prefix + "bias"].double() - sd[prefix + "running_mean"].double() * g / std

        for n in range(b.conv_branches):
            t, s = bn(f"{p}.rbr_conv.{n}.bn.")
            w_sum += sd[f"{p}.rbr_conv.{n}.conv.weight"].double() * t.view(-1, 1, 1, 1)
            b_sum += s
        if b.has_scale:
            t, s = bn(f"{p}.rbr_scale.bn.")
            w_sum[:, :, k // 2, k // 2] += sd[f"{p}.rbr_scale.conv.weight"].double()[:, :, 0, 0] \
                * t.view(-1, 1)
            b_sum += s
        if b.has_identity:
            t, s = bn(f"{p}.rbr_skip.")
            c = torch.arange(b.out_channels)  # channel c passes itself: input c % cpg
            w_sum[c, c % cpg, k // 2, k // 2] += t
            b_sum += s
        if b.has_se:
            for part in ("reduce", "expand"):
                for leaf in ("weight", "bias"):
                    out[f"{p}.se.{part}.{leaf}"] = sd[f"{p}.se.{part}.{leaf}"].double()
        out[f"{p}.reparam_conv.weight"] = w_sum
        out[f"{p}.reparam_conv.bias"] = b_sum
    out["linear.weight"] = sd["linear.weight"].double()
    out["linear.bias"] = sd["linear.bias"].double()
    return out


def pytest_configure(config):
    """Under pytest-xdist each worker computes on one thread: two workers with two OpenMP
    threads each on two cores spin against each other and run convolutions up to 100x slower.
    Subprocesses that tests start inherit the setting."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# What runs whole on one worker under pytest-xdist, longest first (measured: 6-95 s each on 2
# cores): a long module, or modules that share a cost a process pays once (ExecuTorch's and
# LiteRT's first export in a process, 3-4 s each; the mmengine Runner's file, 4 s; the warm
# CLI server, 1.3 s).  Each unit starts as a worker frees up; the short modules' tests (under
# 8 s a module) are handed out one by one at the end.  The order changes no result, only the
# wall time.
RUN_TOGETHER = (
    ("test_docs.py",),
    ("test_mobile_export.py", "test_quant.py", "test_artifact_roundtrip.py",
     "test_trained_checks.py", "test_equalize_quant.py"),  # in-process ExecuTorch and LiteRT
    ("test_hostile_signals.py",),
    ("test_hostile_streams.py", "test_hostile_writes.py"),  # the warm CLI server (warm_cli)
    ("test_verdict.py",), ("test_verify.py",), ("test_eval.py",), ("test_export.py",),
    ("test_stats.py",), ("test_trained.py",), ("test_hostile_rendering.py",),
    ("test_convert.py",), ("test_pickle_rule.py", "test_training_files.py"),  # mmengine's file
    ("test_width.py",),
)
_UNIT = {module: index for index, unit in enumerate(RUN_TOGETHER) for module in unit}


def _unit_of(nodeid: str):
    """(index of the unit in RUN_TOGETHER, the unit's name) of a test, or None."""
    module = os.path.basename(nodeid.split("::", 1)[0])
    index = _UNIT.get(module)
    return None if index is None else (index, RUN_TOGETHER[index][0])


def pytest_collection_modifyitems(config, items):
    def rank(item):
        unit = _unit_of(item.nodeid)
        return len(RUN_TOGETHER) if unit is None else unit[0]

    items.sort(key=rank)  # stable: within a unit, the collection order


def pytest_collection_finish(session):
    """What importing torch and the test modules made lives until the end: frozen out of the
    cyclic GC, it is not traversed again by every full collection, as the CLI's own
    settle_heap() does for a command.  The runtimes' imports come later (millions of objects
    that also live until the end): a full collection, which traverses them all, runs after
    1000 middle-generation collections instead of 10, and a young one after 10,000 new
    objects instead of 700: collections take ~7 s of a suite on two workers instead of ~12,
    at a peak of ~4.5 GB for the larger worker instead of ~3.9 GB."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 1000)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: pytest runs without it too
def pytest_xdist_make_scheduler(config, log):
    """Each unit of RUN_TOGETHER runs whole on one worker, longest first: its fixtures
    (networks, exports, the documents' warm server) and its runtimes' first exports are made
    once, not once per worker that runs some of its tests.  The short modules' tests are
    handed out one by one at the end, so both workers finish together."""
    from xdist.scheduler import LoadScopeScheduling

    if config.getvalue("dist") != "load":  # another --dist asked for on the command line
        return None

    class UnitsWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            unit = _unit_of(nodeid)
            return nodeid if unit is None else unit[1]

    config.option.loadscopereorder = False  # the collection order (longest units first)
    return UnitsWhole(config, log)


def pytest_addoption(parser):
    parser.addoption("--fuzz-n", type=int, default=None, metavar="N",
                     help="number of mutated checkpoints for tests/test_fuzz.py "
                          "(default: a small bounded run; env MOBILEONE_FUZZ_N works too)")
    parser.addoption("--full-retrain", action="store_true",
                     help="tests/test_trained.py retrains the shipped digits_s4 to the end of "
                          "its schedule (~25 s) instead of comparing its first epochs")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Lines tests leave in config._mobileone_summary (e.g. how many fuzz inputs were tried)."""
    for line in getattr(config, "_mobileone_summary", []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def runner_file(tmp_path_factory):
    """(epoch_1.pth written by the installed mmengine's Runner (tests/mmengine_runner.py), the
    live EMA and raw weights of that run).  The Runner runs in a subprocess: it changes
    process-wide settings (seeds, thread and multiprocessing options)."""
    import subprocess
    import sys

    import torch

    from mobileone_cli.io.read import load_checkpoint

    pytest.importorskip("mmengine", reason="mmengine is part of the test extra")
    here = os.path.dirname(os.path.abspath(__file__))
    work = tmp_path_factory.mktemp("mmengine")
    init = work / "init.pth"
    # Start from mmpretrain's own weights of the same network (the fixture's EMA weights).
    fixture = os.path.join(here, "fixtures", "mmpretrain", "epoch_2.pth")
    torch.save(load_checkpoint(fixture).state_dict, init)
    proc = subprocess.run([sys.executable, os.path.join(here, "mmengine_runner.py"), str(init),
                           str(work / "run")], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "run" / "epoch_1.pth", torch.load(work / "run" / "live.pth",
                                                     weights_only=True)


# TINY as a model config file, for commands and subprocesses that take --config.
TINY_YAML = """\
model:
  type: ImageClassifier
  backbone:
    type: MobileOne
    arch:
      stem_channels: 8
      widths: [8, 16, 24]
      blocks: [1, 2, 1]
      conv_branches: [2, 1, 3]
      se_blocks: [0, 1, 1]
  neck: {type: GlobalAveragePooling}
  head: {type: LinearClsHead, num_classes: 10, in_channels: 24}
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """Path of a config file that describes TINY."""
    path = tmp_path_factory.mktemp("tiny_config") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return str(path)
