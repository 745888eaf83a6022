"""Hostile inputs that are not checkpoints: configs, options, image folders, sizes that ask for
more memory than a machine has.

A small input must not buy unbounded work: YAML alias bombs, nesting and huge integers, configs
beyond the bounds of spec/limits.py (or within them but too large to build), images whose
decoded or resized size explodes, batches and input sizes that cannot fit.  Each is exit 2 with
one line naming the limit; the ones that used to cost gigabytes or minutes are measured in a
subprocess.
"""
from __future__ import annotations

import os

import pytest
import torch

from .hostile import (HUGE_CONFIG, alias_bomb, assert_bounded, assert_refused,  # noqa: F401
                      one_thread, run_bounded, tiny_sd)


@pytest.mark.parametrize("eps", ["-1e-5", "nan", "inf", "-inf", "2"])
def test_bad_bn_eps_option(eps, tmp_path, tiny_sd, run_cli):
    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    dst = str(tmp_path / "o.pth")
    assert_refused(run_cli("convert", str(src), dst, f"--bn-eps={eps}"), dst, "--bn-eps")


def test_bn_eps_is_checked_in_the_library_too(tmp_path, tiny_sd):
    from mobileone_cli.convert import convert_file
    from mobileone_cli.errors import BadInput

    src = tmp_path / "ok.pth"
    torch.save(tiny_sd, src)
    with pytest.raises(BadInput, match="bn-eps"):
        convert_file(str(src), str(tmp_path / "o.pth"), eps=-1.0)
    assert not (tmp_path / "o.pth").exists()
