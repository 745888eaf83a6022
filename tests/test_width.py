"""Every command's output at 80 columns: no line wider, no cell cut, the numbers whole.

Each command is rendered through the CLI with ``COLUMNS=80`` (output not a terminal, as in a
pipe or a CI log).  Rich marks a cell it had to cut with '…'; the tool itself shortens long paths
in the middle with the same character, so a '…' is allowed only where it joins the start and the
end of a path the test gave.  Lines the tool keeps whole on purpose (the one-line verdicts and
error lines, grep-able) may be wider.  A subprocess run checks that ``COLUMNS`` is honoured the
same way outside the test runner, and that wide terminals are capped.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch

from mobileone_cli.render.console import MAX_WIDTH
from .nets import FastVitLike, randomize

WIDTH = 80
# Kept whole on purpose: verdicts, results and error lines (docs/cli.md, "80 columns").
WHOLE = re.compile(r"(PASS|FAIL|check|error|hint|OK|bad input|mismatch|internal error): "
                   r"|\d+ of \d+ converted")
HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def run80(run_cli_env, *args):
    return run_cli_env({"COLUMNS": str(WIDTH)}, *args)


@pytest.fixture
def run_cli_env():
    from click.testing import CliRunner

    from mobileone_cli.cli import cli

    def invoke(env, *args):
        return CliRunner(env=env).invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _one_word(line: str) -> bool:
    """A line that is one path or one backticked command (kept whole to be copied), after
    at most the words that did not fit the line before."""
    body = line.strip()
    return len(body.split()) == 1 or re.fullmatch(r"[^`]*`[^`]*`\S*", body) is not None


def assert_fits(text: str, paths=(), numbers=(), width: int = WIDTH) -> None:
    """No line wider than ``width`` (the whole-line verdicts aside), '…' only inside a path the
    tool shortened (each '…' standing for at least one character of it, in order), and every
    expected number printed whole."""
    names = set(paths) | {os.path.basename(p) for p in paths}
    for line in text.splitlines():
        if len(line) > width:
            assert WHOLE.match(line) or _one_word(line), f"{len(line)} columns: {line!r}"
        for token in re.split(r"[\s│┃|]+", line):
            if "…" not in token:
                continue
            cut = re.compile(".+".join(re.escape(piece) for piece in token.split("…")))
            assert any(cut.fullmatch(p) for p in names), \
                f"a cut cell (not a path the tool shortened): {token!r} in {line!r}"
    for n in numbers:
        assert n in text, f"{n!r} not printed whole"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A train s0 file and its fusion under a deep folder (long paths), a FastViT-like file."""
    from mobileone_cli.io.write import save_checkpoint
    from mobileone_cli.models.synthetic import random_state_dict
    from mobileone_cli.arch.specs import get_arch

    root = tmp_path_factory.mktemp("width")
    deep = root / "experiments" / "imagenet_mobileone_reparameterization_runs" / "seed_0"
    deep.mkdir(parents=True)
    train = str(deep / "mobileone_s0_unfused_checkpoint_epoch_300.pth")
    save_checkpoint(train, random_state_dict(get_arch("s0")), force=True)
    deploy = str(deep / "mobileone_s0_deploy_checkpoint_epoch_300.pth")
    from mobileone_cli.jobs.convert import convert_file

    convert_file(train, deploy, input_size=(32, 32))
    fastvit = str(deep / "fastvit_like_network_weights.pth")
    torch.save(randomize(FastVitLike(), seed=3).state_dict(), fastvit)
    return {"root": root, "deep": deep, "train": train, "deploy": deploy, "fastvit": fastvit}


def test_convert_fits(run_cli_env, files, tmp_path):
    dst = str(files["deep"] / "converted_to_timm_layout_for_the_detection_backbone.pth")
    res = run80(run_cli_env, "convert", files["train"], dst, "--to", "timm", "--input-size",
                "32", "--force")
    assert res.exit_code == 0, res.output
    assert_fits(res.output, [files["train"], dst], ["5,293,272", "2,078,504", "1,323"])


def test_batch_convert_fits(run_cli_env, files, tmp_path):
    out = str(tmp_path / "deploy_outputs_of_the_sweep")
    res = run80(run_cli_env, "convert", files["train"], files["fastvit"], out + "/",
                "--input-size", "32", "--jobs", "1")
    assert res.exit_code == 2, res.output  # the FastViT file is bad input, the s0 file converts
    from mobileone_cli.jobs.batch import output_name

    dsts = [os.path.join(out, output_name(os.path.basename(p), suffix="_deploy"))
            for p in (files["train"], files["fastvit"])]
    assert_fits(res.output, [files["train"], files["fastvit"]] + dsts, ["1 of 2 converted"])
    assert "--generic" in res.output  # the failed row says what to try


@pytest.mark.parametrize("extra", [(), ("--all-blocks",), ("-v",)])
def test_verify_fits(run_cli_env, files, extra):
    res = run80(run_cli_env, "verify", files["train"], files["deploy"], "--input-size", "32",
                "--batch", "1", *extra)
    assert res.exit_code == 0, res.output
    assert_fits(res.output, [files["train"], files["deploy"]], ["stage3.19" if extra else
                                                                "stage3"])


def test_failing_verify_fits(run_cli_env, files, tmp_path):
    from mobileone_cli.io.write import save_checkpoint
    from mobileone_cli.models.synthetic import random_state_dict
    from mobileone_cli.arch.specs import get_arch

    other = str(tmp_path / "another_run_deploy.pth")
    save_checkpoint(other, random_state_dict(get_arch("s0"), form="deploy", seed=5), force=True)
    res = run80(run_cli_env, "verify", files["train"], other, "--input-size", "32", "--batch",
                "1")
    assert res.exit_code == 1, res.output
    assert_fits(res.output, [files["train"], other], ["BAD"])


@pytest.mark.parametrize("extra, numbers", [
    ((), ["5.29 M", "2.08 M", "1.05 G", "275 M", "5,293,272", "1,051,935,232"]),
    (("--exact",), ["2,634,368", "649,472", "505,748,992", "126,318,080"]),
])
def test_stats_fits(run_cli_env, files, extra, numbers):
    res = run80(run_cli_env, "stats", files["train"], *extra)
    assert res.exit_code == 0, res.output
    assert_fits(res.output, [files["train"]], numbers)


@pytest.mark.slow  # a bench: both forms built and timed
def test_stats_bench_fits(run_cli_env, bench_in_this_process):
    """The bench report at 80 columns (its children run in this process: the layout is what
    is checked here; tests/test_stats.py starts the real ones)."""
    res = run80(run_cli_env, "stats", "--arch", "s0", "--bench", "--runs", "1", "--warmup", "1",
                "--input-size", "32")
    assert res.exit_code == 0, res.output
    assert_fits(res.output, (), ["speed-up from fusion"])


@pytest.mark.parametrize("which", ["train", "deploy", "fastvit"])
def test_inspect_fits(run_cli_env, files, which):
    res = run80(run_cli_env, "inspect", files[which])
    assert res.exit_code == 0, res.output
    assert_fits(res.output, [files[which]], ["health"])


def test_generic_fits(run_cli_env, files, tmp_path):
    dst = str(files["deep"] / "fastvit_like_network_weights_reparameterized.pth")
    res = run80(run_cli_env, "convert", "--generic", files["fastvit"], dst, "--force")
    assert res.exit_code == 0, res.output
    keys = f"{len(torch.load(files['fastvit']))} -> {len(torch.load(dst))}"
    assert_fits(res.output, [files["fastvit"], dst], ["x+s*(mixer-norm)", "mmpretrain", keys])
    # RepMixer fuses as one block (mixer.reparam_conv): its row names the block and type whole
    assert re.search(r"^mixer +RepMixer +x\+s\*\(mixer-norm\) ", res.output, re.M), res.output


def test_generic_long_block_paths_break_between_names(run_cli_env, files, tmp_path):
    """Real FastViT paths and type names do not fit 80 columns: they break after a '.' or
    between the words of a type, never inside a name."""
    src = os.path.join(os.path.dirname(__file__), "fixtures", "family",
                       "apple_fastvit.safetensors")
    dst = str(tmp_path / "fused.safetensors")
    res = run80(run_cli_env, "convert", "--generic", src, dst)
    assert res.exit_code == 0, res.output
    assert_fits(res.output, [src, dst], ["ReparamLarge", "KernelConv", "token_mixer"])
    table = res.output.split("────", 1)[1].split("FastViT/MobileCLIP", 1)[0]
    firsts = [ln.split()[0] for ln in table.splitlines()[1:] if ln.strip()]
    assert all(re.fullmatch(r"([A-Za-z_]+|\d+)(\.([A-Za-z_]+|\d+))*\.?|[A-Z][a-z]+"
                            r"([A-Z][a-z]+)*", w) for w in firsts), firsts


def test_demo_fits(run_cli_env, tmp_path):
    res = run80(run_cli_env, "demo", "--synthetic", "--dir",
                str(tmp_path / "a_demo_folder_with_a_long_name"))
    assert res.exit_code == 0, res.output
    paths = [str(tmp_path / "a_demo_folder_with_a_long_name" / n)
             for n in ("mobileone_s0_unfused.pth.tar", "mobileone_s0.pth")]
    assert_fits(res.output, paths, ["5,293,272"])


@pytest.mark.skipif(not HAVE_ORT, reason="the onnx extra is not installed")
def test_export_and_onnx_inspect_fit(run_cli_env, files):
    dst = str(files["deep"] / "mobileone_s0_for_the_phone_fp16.onnx")
    res = run80(run_cli_env, "export", files["train"], dst, "--input-size", "32", "--dtype",
                "fp16", "--exporter", "torchscript", "--force")
    assert res.exit_code == 0, res.output
    assert_fits(res.output, [files["train"], dst], ["vs fp32", "1000]"])
    res = run80(run_cli_env, "inspect", dst)
    assert res.exit_code == 0, res.output
    assert_fits(res.output, [dst], ["initializers"])


def _cli(env_columns, *args):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if env_columns is not None:
        env["COLUMNS"] = env_columns
    return subprocess.run([sys.executable, "-m", "mobileone_cli", *args], capture_output=True,
                          text=True, env=env, check=True).stdout


def test_columns_is_honoured_outside_a_terminal_and_capped():
    """Piped output follows COLUMNS like a terminal does: exact numbers where they fit, rounded
    ones where not; a very wide setting is capped at MAX_WIDTH; without COLUMNS, 80."""
    narrow, wide, huge, unset = (_cli(c, "stats", "--arch", "s2")
                                 for c in ("80", "110", "400", None))
    assert unset == narrow
    assert "7.88 M" in narrow and max(map(len, narrow.splitlines())) <= 80
    assert "7,884,648" in wide.split("totals")[0] and "7.88 M" not in wide
    assert 80 < max(map(len, wide.splitlines())) <= 110
    assert max(map(len, huge.splitlines())) <= MAX_WIDTH


def test_notes_wrap_but_verdicts_stay_whole(run_cli_env, files):
    res = run_cli_env({"COLUMNS": "40"}, "verify", files["train"], files["deploy"],
                      "--input-size", "32", "--batch", "1")
    lines = res.output.splitlines()
    verdict = [ln for ln in lines if ln.startswith("PASS:")]
    assert len(verdict) == 1 and len(verdict[0]) > 40  # one line, however narrow
    sens = next(i for i, ln in enumerate(lines) if ln.startswith("rounding sensitivity:"))
    assert len(lines[sens]) <= 40 and lines[sens + 1].startswith("  ")  # wrapped, indented


def test_reference_numbers_whole_in_the_narrowest_stats(run_cli_env):
    """The totals table keeps every digit at 80 columns (the published s4 counts)."""
    res = run80(run_cli_env, "stats", "--arch", "s4")
    totals = res.output.split("totals by convention")[1]
    for n in (14951248, 14838352, 2986802432, 2979269760):
        assert f"{n:,}" in totals
