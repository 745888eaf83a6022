"""The command group itself: demo, --version, `python -m mobileone_cli`."""
from __future__ import annotations

import os


def test_demo_and_version(run_cli, tmp_path):
    res = run_cli("demo", "--dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "OK" in res.stdout
    assert os.path.exists(tmp_path / "mobileone_s0.pth")
    res = run_cli("--version")
    assert res.exit_code == 0 and "mobileone" in res.stdout


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mobileone_cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert "convert" in out.stdout
