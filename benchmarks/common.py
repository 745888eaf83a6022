"""What every benchmark section shares: whole-process timing and memory, synthetic inputs, and
the report (a table of cases and a table of targets, each PASS or MISS).

Every case is a fresh Python process, so what is measured is what a user waits for: start-up,
imports, reading, the work, writing.  Wall time is measured around the child, peak RSS is the
child's own ru_maxrss (os.wait4).  Each case runs ``runs`` times; the median is reported.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
MOBILEONE = [PY, "-m", "mobileone_cli"]


def run_once(cmd: Sequence[str], env: Dict[str, str] = None,
             codes: Sequence[int] = (0,)) -> Tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one child process; a child exiting with a code
    not in ``codes`` stops the run.  Output goes to files, not pipes: a chatty child cannot
    block on a full pipe."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        if code not in codes:
            raise CaseFailed(f"benchmark case failed ({code}): {' '.join(cmd)}\n"
                             f"{err.read().decode(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0, text


class CaseFailed(SystemExit):
    """A case's process exited non-zero (a section may catch it and report the case)."""


def measure(cmd: Sequence[str], runs: int, cleanup: Sequence[str] = (),
            env: Dict[str, str] = None, parse: bool = False,
            codes: Sequence[int] = (0,)) -> Dict[str, Any]:
    """Median wall time and peak RSS of ``runs`` runs of ``cmd`` (``cleanup`` removed first).

    ``parse``: the child prints a JSON object as its last stdout line (what it measured inside,
    e.g. images and seconds of a pass); the list of them, one per run, is under "json"."""
    walls, rss, docs = [], [], []
    for _ in range(runs):
        for path in cleanup:
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        w, r, text = run_once(cmd, env, codes)
        walls.append(w)
        rss.append(r)
        if parse:
            docs.append(json.loads(_last_json(text)))
    m: Dict[str, Any] = {"wall": statistics.median(walls), "rss": statistics.median(rss)}
    if parse:
        m["json"] = docs
    return m


def _last_json(text: str) -> str:
    """The child's JSON: its last line, or (``--json`` of a command) the whole output."""
    text = text.strip()
    last = text.splitlines()[-1] if text else "{}"
    return last if last.startswith("{") else text


MAKE = """
import sys
from mobileone_cli.arch.specs import get_arch
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.models.synthetic import random_state_dict
for spec, path in zip(sys.argv[1::2], sys.argv[2::2]):
    arch, form, *tampered = spec.split(":")
    sd = random_state_dict(get_arch(arch), seed=1)
    if form == "deploy":
        sd = fuse_state_dict(sd, get_arch(arch))
    for block in tampered:  # 'arch:deploy:stage2.5': that block's bias moved
        sd[block + ".reparam_conv.bias"] = sd[block + ".reparam_conv.bias"] + 0.5
    save_checkpoint(path, sd, force=True)
"""


def make_checkpoints(folder: str, specs: Dict[str, str]) -> Dict[str, str]:
    """{name: path} of synthetic checkpoints ({name: 'arch:form'}, or 'arch:deploy:BLOCK' with
    BLOCK's bias moved by 0.5, with file names as names),
    made in a child so that this process never imports torch (a forked child's ru_maxrss would
    otherwise start at the parent's size)."""
    paths = {name: os.path.join(folder, name) for name in specs}
    args = [x for name in specs for x in (specs[name], paths[name])]
    subprocess.run([PY, "-c", MAKE, *args], check=True, cwd=ROOT)
    return paths


@dataclass
class Report:
    """Cases (wall s, peak RSS MiB) and targets (measured against a limit) of one run."""

    rows: List[Tuple[str, Dict[str, float]]] = field(default_factory=list)
    checks: List[Tuple[str, float, float, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def case(self, name: str, m: Dict[str, Any]) -> Dict[str, Any]:
        self.rows.append((name, m))
        shown = (f"{m['wall']:.2f} s, {m['rss']:.0f} MiB" if "wall" in m
                 else f"{m['value']:.3g} {m.get('unit', '')}")
        print(f"  {name}: {shown}", file=sys.stderr, flush=True)
        return m

    def target(self, name: str, measured: float, limit: float, unit: str = "x",
               higher_is_better: bool = False) -> None:
        self.checks.append((name, measured, limit, unit if not higher_is_better else unit + ">"))

    @property
    def misses(self) -> int:
        return sum(not _ok(c) for c in self.checks)

    def markdown(self, header: str) -> str:
        lines = [header, "", "| case | wall (s) | peak RSS (MiB) |", "|---|---:|---:|"]
        lines += [f"| {n} | {m['wall']:.2f} | {m['rss']:.0f} |" for n, m in self.rows
                  if "wall" in m]
        extra = [(n, m) for n, m in self.rows if "wall" not in m]
        if extra:
            lines += ["", "| case | value |", "|---|---:|"]
            lines += [f"| {n} | {m['value']:.3g} {m.get('unit', '')} |" for n, m in extra]
        lines += ["", "| target | measured | limit | result |", "|---|---:|---:|---|"]
        for c in self.checks:
            name, value, limit, unit = c
            u = unit.rstrip(">")
            rel = ">=" if unit.endswith(">") else "<="
            lines.append(f"| {name} | {value:.2f}{u} | {rel} {limit:.2f}{u} | "
                         f"{'PASS' if _ok(c) else 'MISS'} |")
        lines += [f"\n{n}" for n in self.notes]
        return "\n".join(lines)


def _ok(check: Tuple[str, float, float, str]) -> bool:
    _, value, limit, unit = check
    return value >= limit if unit.endswith(">") else value <= limit
