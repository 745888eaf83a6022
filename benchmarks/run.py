"""Whole-process benchmark of `mobileone convert` against two baselines measured in the same run.

    python benchmarks/run.py [--runs 3] [--update-docs]

Every case is a fresh Python process (what a user waits for: start-up, imports, load, save).
Wall time is measured around the child, peak RSS is the child's own ru_maxrss (os.wait4).  Medians
of --runs runs are compared with:
  floor        a process that imports torch, loads the checkpoint (weights_only) and saves it again;
  model route  a process that builds our train model, loads, deep-copies, fuses module by module and
               saves: the way Apple's and timm's helpers work (it verifies nothing).
Targets are printed with PASS/MISS; nothing here is asserted in the test suite.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOC = os.path.join(ROOT, "docs", "performance.md")
BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"

FLOOR = """
import sys, torch
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
torch.save(sd, sys.argv[2])
"""

# The usual route, written out module by module as the reference helpers do it: build the train
# model, load, deep-copy, replace every block by a conv whose kernel is computed from its modules.
MODEL_ROUTE = """
import copy, sys, torch
from torch import nn
from mobileone_cli.spec.arch import get_arch
from mobileone_cli.models.mobileone import DeployBlock, MobileOne, TrainBlock

def branch_kernel(seq_or_bn, spec):
    if isinstance(seq_or_bn, nn.BatchNorm2d):
        bn = seq_or_bn
        k = torch.zeros(spec.in_channels, spec.in_channels // spec.groups, spec.kernel_size,
                        spec.kernel_size)
        for i in range(spec.in_channels):
            k[i, i % (spec.in_channels // spec.groups), spec.kernel_size // 2,
              spec.kernel_size // 2] = 1
    else:
        bn, k = seq_or_bn.bn, seq_or_bn.conv.weight
        pad = (spec.kernel_size - k.shape[-1]) // 2
        k = nn.functional.pad(k, [pad] * 4)
    t = bn.weight / (bn.running_var + bn.eps).sqrt()
    return k * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t

def reparameterize(block):
    parts = list(block.rbr_conv) + [m for m in (block.rbr_scale, block.rbr_skip) if m is not None]
    ks, bs = zip(*(branch_kernel(p, block.spec) for p in parts))
    new = DeployBlock(block.spec)
    new.se = block.se
    new.reparam_conv.weight.data = sum(ks)
    new.reparam_conv.bias.data = sum(bs)
    return new

model = MobileOne(get_arch(sys.argv[3]))
model.load_state_dict(torch.load(sys.argv[1], map_location="cpu", weights_only=True))
model.eval()
fused = copy.deepcopy(model)
with torch.no_grad():
    fused.stage0 = reparameterize(fused.stage0)
    for s in range(1, 5):
        stage = getattr(fused, f"stage{s}")
        for i, blk in enumerate(stage):
            stage[i] = reparameterize(blk)
torch.save(fused.state_dict(), sys.argv[2])
"""


def run_once(cmd: Sequence[str]) -> Tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark case failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def measure(cmd: Sequence[str], runs: int, cleanup: Sequence[str] = ()) -> Dict[str, float]:
    walls, rss = [], []
    for _ in range(runs):
        for path in cleanup:
            if os.path.exists(path):
                os.unlink(path)
        w, r, _ = run_once(cmd)
        walls.append(w)
        rss.append(r)
    return {"wall": statistics.median(walls), "rss": statistics.median(rss)}


MAKE = """
import sys
from mobileone_cli.spec.arch import get_arch
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.synthetic import random_state_dict
for arch, path in zip(sys.argv[1::2], sys.argv[2::2]):
    form = "deploy" if "deploy" in arch else "train"
    save_checkpoint(path, random_state_dict(get_arch(arch[:2]), seed=1, form=form), force=True)
"""


def make_checkpoints(folder: str) -> Dict[str, str]:
    """Synthetic train checkpoints, made in a child so that this process never imports torch
    (a forked child's ru_maxrss would otherwise start at the parent's size)."""
    paths = {"s0": os.path.join(folder, "mobileone_s0_unfused.pth.tar"),
             "s4": os.path.join(folder, "mobileone_s4_unfused.pth.tar"),
             "s4-safetensors": os.path.join(folder, "mobileone_s4_unfused.safetensors"),
             "s4-deploy-safetensors": os.path.join(folder, "mobileone_s4.safetensors")}
    args = [x for kv in paths.items() for x in kv]
    subprocess.run([sys.executable, "-c", MAKE, *args], check=True, cwd=ROOT)
    return paths


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per case (median is reported)")
    ap.add_argument("--update-docs", action="store_true",
                    help="rewrite the results block in docs/performance.md with this run")
    args = ap.parse_args(argv)

    py = sys.executable
    mobileone = [py, "-m", "mobileone_cli"]
    tmp = tempfile.mkdtemp(prefix="mobileone-bench-")
    rows: List[Tuple[str, Dict[str, float]]] = []
    checks: List[Tuple[str, float, float, str]] = []  # (target, measured, limit, unit)
    try:
        ck = make_checkpoints(tmp)
        out = os.path.join(tmp, "out.pth")
        torch_import = measure([py, "-c", "import torch"], args.runs)
        rows.append(("python -c 'import torch'", torch_import))
        for arch in ("s0", "s4"):
            src = ck[arch]
            floor = measure([py, "-c", FLOOR, src, out], args.runs, [out])
            model = measure([py, "-c", MODEL_ROUTE, src, out, arch], args.runs, [out])
            fast = measure(mobileone + ["convert", "--no-verify", src, out], args.runs, [out])
            full = measure(mobileone + ["convert", src, out], args.runs, [out])
            rows += [(f"{arch} floor: load+save", floor), (f"{arch} model route", model),
                     (f"{arch} mobileone convert --no-verify", fast),
                     (f"{arch} mobileone convert (verified)", full)]
            if arch == "s4":
                checks += [
                    ("convert --no-verify s4 wall <= 1.10x floor", fast["wall"] / floor["wall"],
                     1.10, "x"),
                    ("convert --no-verify s4 peak RSS <= floor + 32 MiB",
                     fast["rss"] - floor["rss"], 32.0, "MiB"),
                    ("convert (verified) s4 wall <= model route", full["wall"] / model["wall"],
                     1.0, "x"),
                    ("convert (verified) s4 peak RSS <= model route", full["rss"] / model["rss"],
                     1.0, "x"),
                ]
        for label, cmd in (("mobileone --help", mobileone + ["--help"]),
                           ("mobileone stats --arch s4", mobileone + ["stats", "--arch", "s4"]),
                           ("mobileone inspect --no-health s4_unfused.safetensors",
                            mobileone + ["inspect", "--no-health", ck["s4-safetensors"]]),
                           ("mobileone inspect s4.safetensors (deploy, health)",
                            mobileone + ["inspect", ck["s4-deploy-safetensors"]])):
            m = measure(cmd, args.runs)
            rows.append((label, m))
            checks.append((f"{label} wall <= 0.25x import torch", m["wall"] / torch_import["wall"],
                           0.25, "x"))
        # The health of a train-form file measures the eps sensitivity with the torch fusion
        # (two float64 fusions): reported against convert --no-verify, no target.
        for label, src in (("mobileone inspect s4_unfused.safetensors (train, health)",
                            ck["s4-safetensors"]),
                           ("mobileone inspect s4_unfused.pth.tar (train, health)", ck["s4"])):
            rows.append((label, measure(mobileone + ["inspect", src], args.runs)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    torch_version = subprocess.run([py, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}, torch {torch_version}; median of {args.runs} runs",
             "", "| case | wall (s) | peak RSS (MiB) |", "|---|---:|---:|"]
    lines += [f"| {name} | {m['wall']:.2f} | {m['rss']:.0f} |" for name, m in rows]
    lines += ["", "| target | measured | limit | result |", "|---|---:|---:|---|"]
    misses = 0
    for name, value, limit, unit in checks:
        ok = value <= limit
        misses += not ok
        lines.append(f"| {name} | {value:.2f}{unit} | {limit:.2f}{unit} | "
                     f"{'PASS' if ok else 'MISS'} |")
    report = "\n".join(lines)
    print(report)
    if args.update_docs:
        with open(DOC, encoding="utf-8") as fh:
            text = fh.read()
        block = f"{BEGIN}\n{report}\n{END}"
        if BEGIN in text:
            text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text,
                          flags=re.S)
        else:
            text = text.replace("## Performance\n", f"## Performance\n\n{block}\n", 1)
        with open(DOC, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"\ndocs/performance.md updated ({misses} target(s) missed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
