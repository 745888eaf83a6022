"""The shipped examples run as documented."""
from __future__ import annotations

import os
import re
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_python_api_tour(tmp_path, capsys, monkeypatch):
    """Run as ``python examples/python_api.py FOLDER`` would, in this process (the example
    needs nothing of a fresh one)."""
    script = os.path.join(ROOT, "examples", "python_api.py")
    monkeypatch.setattr(sys, "argv", [script, str(tmp_path)])
    runpy.run_path(script, run_name="__main__")
    text = capsys.readouterr().out
    assert "verify: equal" in text
    assert "inspect: safetensors timm deploy s1" in text
    # s1 counts of the published models at 224x224, typed in independently.
    assert re.search(r"stats: train\s+4,825,192 params\s+830,062,080 MACs", text)
    assert re.search(r"stats: deploy\s+4,764,840 params\s+825,057,024 MACs", text)
    for rel in re.findall(r"max rel diff ([0-9.e+-]+)", text):
        assert float(rel) < 1e-4  # the tool's rtol; a wrong fusion is off by 1e-2 and more
    assert os.path.exists(tmp_path / "mobileone_s1_timm.safetensors")
