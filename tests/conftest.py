"""Shared fixtures: synthetic checkpoints with random weights AND random BN statistics."""
from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from mobileone_cli.arch import get_arch
from mobileone_cli.checkpoint import save_checkpoint
from mobileone_cli.cli import cli
from mobileone_cli.synthetic import random_state_dict

ARCHS = ("s0", "s1", "s2", "s3", "s4")


def invoke(*args: str):
    """Run the CLI in-process; the result has exit_code, stdout, stderr, output."""
    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def run_cli():
    return invoke


@pytest.fixture
def write_ckpt(tmp_path):
    """write_ckpt(arch, form='train', layout='apple', name=None, seed=0, **kw) -> path."""

    def _write(arch="s0", form="train", layout="apple", name=None, seed=0, wrap=None,
               dtype=torch.float32, num_classes=None):
        spec = get_arch(arch, num_classes)
        sd = random_state_dict(spec, form=form, layout=layout, seed=seed, dtype=dtype)
        path = os.path.join(tmp_path, name or f"{arch}_{layout}_{form}.pth")
        if wrap is not None:
            obj = wrap(sd)
            torch.save(obj, path)
        else:
            save_checkpoint(path, sd, force=True)
        return path

    return _write


def pytest_addoption(parser):
    parser.addoption("--fuzz-n", type=int, default=None, metavar="N",
                     help="number of mutated checkpoints for tests/test_fuzz.py "
                          "(default: a small bounded run; env MOBILEONE_FUZZ_N works too)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Lines tests leave in config._mobileone_summary (e.g. how many fuzz inputs were tried)."""
    for line in getattr(config, "_mobileone_summary", []):
        terminalreporter.write_line(line)
