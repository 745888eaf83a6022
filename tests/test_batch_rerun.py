"""A batch re-run that meets its outputs says how to go on; 80-column tables keep names apart."""
from __future__ import annotations

import json
import shutil

import pytest

from mobileone_cli.render.shorten import distinct_cut


def test_distinct_cut_keeps_the_part_that_differs():
    names = [f"batch_input_{n}_checkpoint_epoch_300_train.pth" for n in ("one", "two", "six")]
    for width in (12, 16, 20, 30):
        cut = distinct_cut(names, width)
        assert len(set(cut)) == len(names) and all(len(c) <= width for c in cut)
        for name, c in zip(names, cut):
            assert name.split("_")[2] in c
    assert distinct_cut(["a.pth", "b.pth"], 20) == ["a.pth", "b.pth"]


@pytest.mark.slow
def test_rerun_says_skip_existing_or_force(write_ckpt, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    src = tmp_path / "src"
    src.mkdir()
    one = write_ckpt("s0")
    for n in ("alpha", "beta"):
        shutil.copy(one, src / f"batch_input_{n}_checkpoint_epoch_300_train.pth")
    out = tmp_path / "out"
    out.mkdir()
    args = ("convert", src, out, "--input-size", "64")
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    again = run_cli(*args)
    assert again.exit_code == 2
    assert again.stdout.count("already exists (use --skip-existing or --force)") == 2
    assert "use --skip-existing to leave them alone or" in again.stdout
    rows = [r for r in again.stdout.splitlines() if r.startswith("│")]
    assert len(rows) == 2 and all(max(len(r) for r in rows) <= 80 for r in rows)
    assert "alpha" in rows[0] and "beta" in rows[1]
    doc = json.loads(run_cli(*args, "--json").stdout)
    assert all("--skip-existing" in f["message"] for f in doc["files"])
    assert run_cli(*args, "--skip-existing").exit_code == 0
