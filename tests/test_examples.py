"""The shipped examples run as documented."""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_python_api_tour(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python_api.py"),
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "verify: equal" in text
    assert "inspect: safetensors timm deploy s1" in text
    # s1 counts of the published models at 224x224, typed in independently.
    assert re.search(r"stats: train\s+4,825,192 params\s+830,062,080 MACs", text)
    assert re.search(r"stats: deploy\s+4,764,840 params\s+825,057,024 MACs", text)
    for rel in re.findall(r"max rel diff ([0-9.e+-]+)", text):
        assert float(rel) < 1e-4  # the tool's rtol; a wrong fusion is off by 1e-2 and more
    assert os.path.exists(tmp_path / "mobileone_s1_timm.safetensors")
