"""Hostile metadata in a checkpoint: shared and cyclic lists in ``meta`` are carried into the
output as the same object graph in bounded time and memory; metadata beyond the limits is
refused (exit 2, one line), never expanded.

A 64-level DAG of shared lists names its leaf 2**64 times; copied naively it never finishes
(memory grows until the machine runs out).  Each run is measured in a
subprocess against limits far below that failure (60 s, 2 GiB peak RSS).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.rules.limits import MAX_META_DEPTH

from .conftest import TINY
from .hostile import assert_refused

LIMIT_S = 60
LIMIT_RSS_MB = 2048
# Runs the CLI and reports its own peak RSS on the last stderr line: VmHWM of its own address
# space (ru_maxrss would also count the pages of the forking test process, several GB late in a
# full run, since the high-water mark survives exec).
_MEASURED = (
    "import json, sys\n"
    "from mobileone_cli.cli import main\n"
    "sys.argv = ['mobileone'] + sys.argv[1:]\n"
    "try:\n    main()\n"
    "except SystemExit as exc:\n    code = exc.code\n"
    "else:\n    code = 0\n"
    "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
    "print(json.dumps({'rss_mb': int(hwm.split()[1]) / 1024}), file=sys.stderr)\n"
    "sys.exit(code)\n")


def run_measured(*args):
    """(exit code, stderr without the measurement, peak RSS in MB) of one CLI run."""
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *map(str, args)],
                          capture_output=True, text=True, timeout=LIMIT_S)
    *lines, last = proc.stderr.rstrip("\n").split("\n")
    return proc.returncode, "\n".join(lines), json.loads(last)["rss_mb"]


def hostile_meta():
    cycle = []
    cycle += [cycle, cycle]  # x = []; x += [x, x]
    dag = ["leaf"]
    for _ in range(64):
        dag = [dag, dag]  # 2**64 paths to 'leaf'
    selfref = {"name": "meta"}
    selfref["self"] = selfref
    via_tuple = []
    via_tuple.append((via_tuple, "t"))
    return {"epoch": 3, "cycle": cycle, "dag": dag, "selfref": selfref, "via_tuple": via_tuple}


@pytest.fixture
def mm_sd():
    return random_state_dict(TINY, layout="mmpretrain", seed=4)


@pytest.mark.slow  # a memory-capped subprocess per case
@pytest.mark.parametrize("generic", [False, True], ids=["convert", "generic"])
def test_shared_and_cyclic_meta_is_copied_as_the_same_graph(generic, mm_sd, tmp_path):
    src = tmp_path / "epoch_3.pth"
    torch.save({"meta": hostile_meta(), "state_dict": mm_sd}, src)
    dst = tmp_path / "deploy.pth"
    code, err, rss = run_measured("convert", src, dst, *(["--generic"] if generic else []))
    assert code == 0, err
    assert rss < LIMIT_RSS_MB
    meta = torch.load(dst, weights_only=True)["meta"]
    assert meta["epoch"] == 3
    cycle = meta["cycle"]
    assert len(cycle) == 2 and cycle[0] is cycle and cycle[1] is cycle
    node = meta["dag"]
    for _ in range(64):  # still shared: both branches are one object at every level
        assert len(node) == 2 and node[0] is node[1]
        node = node[0]
    assert node == ["leaf"]
    assert meta["selfref"]["self"] is meta["selfref"]
    assert meta["via_tuple"][0][0] is meta["via_tuple"]


def test_metadata_nested_too_deep_is_refused(mm_sd, tmp_path):
    deep = "bottom"
    for _ in range(MAX_META_DEPTH + 20):
        deep = [deep]
    src = tmp_path / "deep.pth"
    torch.save({"meta": {"deep": deep}, "state_dict": mm_sd}, src)
    dst = tmp_path / "deploy.pth"
    code, err, rss = run_measured("convert", src, dst)
    assert code == 2 and f"more than {MAX_META_DEPTH} levels" in err, err
    assert err.startswith("error:") and "Traceback" not in err and len(err.splitlines()) == 1
    assert not dst.exists() and rss < LIMIT_RSS_MB


def test_metadata_with_too_many_objects_is_refused(mm_sd, tmp_path, run_cli):
    from mobileone_cli.rules.limits import MAX_META_ITEMS

    src = tmp_path / "wide.pth"
    torch.save({"meta": {"steps": [1] * (MAX_META_ITEMS + 1)}, "state_dict": mm_sd}, src)
    dst = tmp_path / "deploy.pth"
    assert_refused(run_cli("convert", src, dst), str(dst), "refusing to copy it")
