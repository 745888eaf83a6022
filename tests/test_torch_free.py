"""The paths that need no tensor arithmetic never import torch (a behaviour, not a timing)."""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from mobileone_cli.cli import main
try:
    main({args!r})
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("TORCH_LOADED" if "torch" in sys.modules else "TORCH_FREE", code)
"""


def run_probe(args):
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))],
                         capture_output=True, text=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1]
    return last.split()[0], int(last.split()[1] or 0), out


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["convert", "--help"]])
def test_help_does_not_import_torch(args):
    state, code, out = run_probe(args)
    assert code == 0, out.stderr
    assert state == "TORCH_FREE", out.stdout


def test_public_api_names_resolve_and_import_lazily():
    """Every name in mobileone_cli.__all__ resolves; importing the package loads no torch."""
    code = ("import sys, mobileone_cli as m; assert 'torch' not in sys.modules; "
            "[getattr(m, n) for n in m.__all__]; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_stats_and_safetensors_inspect_do_not_import_torch(write_ckpt):
    """The torch-free paths: stats of a built-in, inspect of a .safetensors file read from its
    header (--no-health), and the health check of a deploy-form file (numpy only)."""
    train = write_ckpt("s4", name="s4.safetensors")
    deploy = write_ckpt("s1", form="deploy", name="s1_deploy.safetensors")
    for args in (["stats", "--arch", "s4"], ["inspect", "--no-health", train],
                 ["inspect", "--json", "--no-health", train], ["inspect", deploy],
                 ["inspect", "--json", deploy]):
        state, code, out = run_probe(args)
        assert code == 0, out.stderr
        assert state == "TORCH_FREE", (args, out.stdout)


@pytest.mark.slow  # a fresh process that imports torch
def test_eps_sensitivity_of_a_train_file_uses_the_torch_fusion(write_ckpt):
    """The one documented exception: measuring the eps sensitivity runs the tool's fusion (and
    the probe can fail: it sees torch loaded)."""
    state, code, out = run_probe(["inspect", write_ckpt("s1", name="s1.safetensors")])
    assert code == 0, out.stderr
    assert state == "TORCH_LOADED"


def test_any_safetensors_file_is_described_without_torch(tmp_path):
    """A non-MobileOne safetensors file, health included, never needs torch either."""
    import numpy as np
    from safetensors.numpy import save_file

    path = str(tmp_path / "other.safetensors")
    save_file({"conv.weight": np.ones((4, 3, 3, 3), dtype=np.float32),
               "bn.running_var": np.full(4, np.nan, dtype=np.float32)}, path)
    state, code, out = run_probe(["inspect", "--json", path])
    assert code == 0, out.stderr
    assert state == "TORCH_FREE", out.stdout
    assert '"kind": "checkpoint"' in out.stdout and '"verdict": "faults"' in out.stdout
