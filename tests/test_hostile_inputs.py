"""Hostile inputs that are not checkpoints: configs, options, image folders, sizes that ask for
more memory than a machine has.

A small input must not buy unbounded work: YAML alias bombs, nesting and huge integers, configs
beyond the bounds of rules/limits.py (or within them but too large to build), images whose
decoded or resized size explodes, batches and input sizes that cannot fit.  Each is exit 2 with
one line naming the limit; the ones that would cost gigabytes or minutes unbounded are
measured in a subprocess.
"""
from __future__ import annotations

import os

import pytest
import torch

from .hostile import HUGE_CONFIG, alias_bomb, assert_bounded, assert_refused, run_bounded


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("eps", ["-1e-5", "nan", "inf", "-inf", "2"])
def test_bad_bn_eps_option(eps, tmp_path, tiny_sd, run_cli):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst, f"--bn-eps={eps}"), dst, "--bn-eps")


def test_bn_eps_is_checked_in_the_library_too(tmp_path, tiny_sd):
    from mobileone_cli.jobs.convert import convert_file
    from mobileone_cli.errors import BadInput

    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    with pytest.raises(BadInput, match="bn-eps"):
        convert_file(str(src), str(tmp_path / "o.pth"), eps=-1.0)
    assert not (tmp_path / "o.pth").exists()


# --------------------------------------------------------------------------- configs

def _config(tmp_path, text: str, name: str = "net.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("levels,fan,field,needle", [
    (9, 9, "widths", "more than 64 YAML aliases"),  # 573 bytes: 3.5e9 entries once expanded
    (10, 6, "num_classes", "must be an integer, not a list"),  # 60 aliases, 6e7 leaves
])
def test_yaml_alias_bomb_is_bounded(levels, fan, field, needle, tmp_path):
    """A 450-byte alias bomb in a checked field produced a 34 MB error line (554 bytes: >3 GB).
    Aliases are capped, and a value quoted in an error is shortened while its repr is made."""
    path = _config(tmp_path, alias_bomb(levels, fan, field))
    assert os.path.getsize(path) < 600
    res = run_bounded("stats", "--config", path, limit_mb=1024, timeout=120)
    assert_refused(res, None, needle)
    assert len(res.stderr) < 400
    assert_bounded(res, mb=300, cpu_s=20)


@pytest.mark.parametrize("text,needle", [
    ("a: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
    ("model:\n  backbone:\n    arch: {base: s0, num_classes: " + "9" * 5000 + "}\n",
     "unreadable YAML"),
    ("model:\n  backbone:\n    arch: {width_factor: [], blocks: [1], conv_branches: 1}\n",
     "width_factor: is empty"),
    ("model:\n  backbone:\n    arch: {width_factor: [1.0e+307], blocks: [1], conv_branches: 1}\n",
     "width_factor[0]: 1e+307 x 64 gives inf channels"),
    ("model:\n  backbone:\n    arch: {base: s0, blocks: [2, 1000000, 1, 1]}\n",
     "blocks[1]: is 1000000, above the limit of 64"),
    ("model:\n  backbone:\n    arch: {base: s0, conv_branches: 100000000}\n",
     "conv_branches: is 100000000, above the limit of 16"),
    ("model:\n  backbone:\n    arch: {base: s0, widths: [64, 128, 256, 1.0e+400]}\n",
     "widths[3]: must be an integer"),
    ("model:\n  backbone: {type: MobileOne, arch: s0}\n  head: {type: " + "x" * 5000 + "}\n",
     "must be LinearClsHead"),
])
def test_hostile_configs_are_bad_input(text, needle, tmp_path, run_cli):
    """Each of these is one line naming the field and the limit (exit 2), never an internal
    error (exit 3) or minutes of counting."""
    path = _config(tmp_path, text)
    res = run_cli("stats", "--config", path)
    assert_refused(res, None, needle)
    assert len(res.stderr) < 400


def test_oversized_config_file_is_not_read(tmp_path, run_cli):
    path = _config(tmp_path, "# padding\n" * 200_000)
    assert_refused(run_cli("stats", "--config", path), None, "a model config is at most")


@pytest.mark.slow  # three fresh processes under a memory cap
def test_config_too_large_to_build_is_refused_before_building(tmp_path):
    """Within every per-field bound, yet 1.7e12 weights (building it would grow until the
    kernel kills the process): `stats` only counts it, `demo` and `stats --bench` refuse it from
    its size, naming what it needs and what the machine has."""
    path = _config(tmp_path, HUGE_CONFIG, "huge.yaml")
    res = run_bounded("stats", "--config", path, "--json", limit_mb=1024)
    assert res.exit_code == 0, res.output  # counting is arithmetic
    for args in (["demo", "--config", path], ["stats", "--config", path, "--bench"]):
        res = run_bounded(*args, limit_mb=2048)
        assert_refused(res, None, "weights) ", "needs about", "TB of memory", "available")
        assert_bounded(res, mb=600, cpu_s=30)


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("command", ["convert", "verify", "export", "demo"])
def test_seed_out_of_range_is_a_usage_error(command, tmp_path, tiny_sd, run_cli):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    args = {"convert": [src, tmp_path / "o.pth"], "verify": [src],
            "export": [src, tmp_path / "o.onnx"], "demo": []}[command]
    for seed in ("1e23", "-1", str(2 ** 64)):
        res = run_cli(command, *args, "--seed", seed)
        assert_refused(res, None, "--seed")
    assert not (tmp_path / "o.pth").exists()


def test_seed_out_of_range_in_the_library(tmp_path, tiny_sd):
    from mobileone_cli.check.harness import seeded_inputs
    from mobileone_cli.jobs.convert import convert_file
    from mobileone_cli.errors import BadInput

    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    with pytest.raises(BadInput, match="--seed"):
        convert_file(str(src), str(tmp_path / "o.pth"), seed=10 ** 23)
    with pytest.raises(BadInput, match="--seed"):
        seeded_inputs(-1)
    assert not (tmp_path / "o.pth").exists()


@pytest.mark.parametrize("args,needle", [
    (["verify", "{src}", "--batch", "1024", "--input-size", "4096"], "more than one pass may hold"),
    (["export", "{src}", "{out}", "--batch", "1024", "--input-size", "4096"],
     "more than one pass may hold"),
    (["export", "{src}", "{out}", "--batch", "1024", "--input-size", "2048"], "in one pass"),
    (["verify", "{src}", "--batch", "1024", "--input-size", "2048"], "GB of memory"),
])
def test_batches_and_sizes_that_cannot_fit_are_refused(args, needle, tmp_path, tiny_sd,
                                                       run_cli, monkeypatch):
    """--batch 1024 --input-size 4096 passes the option checks but cannot be allocated: the
    pass bound (rules/limits.py) or the memory estimate refuses it up front; the machine here
    is made to have 8 GB so the answer does not depend on the test machine."""
    if args[0] == "export":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    import mobileone_cli.platform as memory

    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 10 ** 9)
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    out = tmp_path / "o.onnx"
    res = run_cli(*[a.format(src=src, out=out) for a in args])
    assert_refused(res, str(out), needle)


OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                   "allocate memory: you tried to allocate 2147483648 bytes. Error code 12 "
                   "(Cannot allocate memory)")


@pytest.mark.parametrize("exc", [OOM, MemoryError()], ids=["torch-allocator", "MemoryError"])
def test_allocation_failure_is_bad_input_naming_what_was_asked(exc, tmp_path, tiny_sd, run_cli,
                                                               monkeypatch):
    """An allocation the estimate did not foresee fails as exit 2 (bad input, not an internal
    error with a bug hint), quoting the command and the size torch asked for."""
    import mobileone_cli.jobs.verify as verify_mod

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(verify_mod, "judge", fail)
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    res = run_cli("verify", str(src), "--input-size", "64")
    assert_refused(res, None, "out of memory", f"`mobileone verify {src} --input-size 64`")
    if exc is OOM:
        assert "an allocation of 2.1 GB failed" in res.stderr


@pytest.mark.slow  # a fresh process under a memory cap (the quick tier: the elongated PNG's)
def test_real_allocation_failure_under_a_memory_cap(tmp_path, tiny_sd):
    """Not simulated: the check's allocations fail under an address-space cap the estimate
    does not know about; the run still exits 2 with one line."""
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    res = run_bounded("verify", src, "--batch", "2", "--input-size", "2048", limit_mb=1100)
    assert_refused(res, None, "out of memory", "mobileone verify")
    assert res.maxrss_mb < 1100


def test_benchmark_child_killed_for_memory_is_bad_input(run_cli, monkeypatch):
    import subprocess as sp

    import mobileone_cli.jobs.stats_bench as bench

    monkeypatch.setattr(bench.subprocess, "run",
                        lambda *a, **k: sp.CompletedProcess(a, -9, "", "Killed\n"))
    res = run_cli("stats", "--arch", "s0", "--bench")
    assert_refused(res, None, "out of memory", "--bench")


# --------------------------------------------------------------------------- images

def _image(folder, name, size, mode="RGB"):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    Image.new(mode, size).save(folder / name)
    return folder / name


def test_elongated_png_is_refused_before_decoding(tmp_path, tiny_sd):
    """A 1x20000 PNG (a few hundred bytes) took 5.4 GB: the aspect ratio kept on resize made a
    256 x 5,120,000 image.  Refused from its header."""
    pytest.importorskip("PIL")
    png = _image(tmp_path / "imgs", "strip.png", (1, 20000))
    assert png.stat().st_size < 1000
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    res = run_bounded("verify", src, "--images", tmp_path / "imgs", limit_mb=2048)
    assert_refused(res, None, "1x20000", "long side is more than 16 times its short side")
    assert_bounded(res, mb=600, cpu_s=30)


def test_decompression_bomb_png_is_refused_quietly(tmp_path, tiny_sd, run_cli):
    """100 megapixels in a 100 KB PNG: over the tool's limit (and Pillow's warning level; its
    two-line warning must not reach stderr)."""
    pytest.importorskip("PIL")
    _image(tmp_path / "imgs", "big.png", (10000, 10000), mode="L")
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    res = run_cli("verify", str(src), "--images", str(tmp_path / "imgs"))
    assert_refused(res, None, "100,000,000 pixels", "more than the limit of")
    assert "DecompressionBomb" not in res.stderr and "Warning" not in res.stderr


def test_too_many_images_are_refused(tmp_path, tiny_sd, run_cli):
    pytest.importorskip("PIL")
    from mobileone_cli.rules.limits import MAX_IMAGES

    for i in range(MAX_IMAGES + 1):
        _image(tmp_path / "imgs", f"{i}.png", (8, 8))
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    res = run_cli("verify", str(src), "--images", str(tmp_path / "imgs"))
    assert_refused(res, None, f"{MAX_IMAGES + 1:,} images", f"at most {MAX_IMAGES:,}")


def test_security_doc_states_the_limits_the_code_uses():
    """docs/security.md lists every limit with the value the code holds inputs to."""
    import mobileone_cli.errors as errors
    import mobileone_cli.rules.limits as limits

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "security.md")).read()
    values = {n: getattr(limits, n) for n in dir(limits) if n.startswith("MAX_")}
    values.update(MAX_MESSAGE=errors.MAX_MESSAGE)
    for name, value in values.items():
        shown = f"{value:,}" if isinstance(value, int) else f"{value}"
        assert f"| `{name}` | {shown} |" in doc, (name, shown)
