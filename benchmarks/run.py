"""Whole-process benchmarks of mobileone, each against a baseline measured in the same run.

    python benchmarks/run.py [--runs N] [--quick] [--only convert verify batch export eval quant
                                    equalize]
                             [--update-docs]

Sections (one module each, ``<name>_cases.py``): convert (and the torch-free start-up paths),
verify, batch, export, eval, quant, equalize.  Each prints its cases (median wall time and peak RSS of whole processes) and its targets with
PASS/MISS; --update-docs writes the report into docs/performance.md.  Nothing here is asserted in
the test suite: speed belongs to benchmarks, not tests.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from typing import List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PY, ROOT, Report  # noqa: E402

SECTIONS = ("convert", "verify", "batch", "export", "eval", "quant", "equalize")
DOC = os.path.join(ROOT, "docs", "performance.md")
BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None,
                    help="runs per case, the median is reported (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="one run per case and the smaller cases only (s0): a first look")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every case (default: torch's, one per core); on "
                         "a machine shared with other jobs, 1 keeps torch's threads from "
                         "waiting on each other")
    ap.add_argument("--update-docs", action="store_true",
                    help="rewrite the results block in docs/performance.md with this run")
    args = ap.parse_args(argv)
    if args.threads is not None:  # the cases inherit it
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    report = Report()
    loads: List[str] = []
    tmp = tempfile.mkdtemp(prefix="mobileone-bench-")
    try:
        for name in args.only:
            print(f"section {name} ...", file=sys.stderr, flush=True)
            before = os.getloadavg()[0]
            importlib.import_module(f"{name}_cases").run(report, tmp, args.runs,
                                                         quick=args.quick)
            # other jobs on the machine slow torch's threads down by far more than their share
            loads.append(f"{name} {before:.1f}-{os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    torch_version = subprocess.run([PY, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    text = report.markdown(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
                           f"{platform.python_version()}, torch {torch_version}; median of "
                           f"{args.runs} run(s){' (--quick)' if args.quick else ''}"
                           f"{f'; OMP_NUM_THREADS={args.threads}' if args.threads else ''}; sections: "
                           f"{', '.join(args.only)}; load average (1 min) before-after "
                           f"each section: {', '.join(loads)}")
    print(text)
    if args.update_docs:
        with open(DOC, encoding="utf-8") as fh:
            doc = fh.read()
        block = f"{BEGIN}\n{text}\n{END}"
        doc = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, doc,
                     flags=re.S) if BEGIN in doc else doc.rstrip() + f"\n\n{block}\n"
        with open(DOC, "w", encoding="utf-8") as fh:
            fh.write(doc)
        print(f"\ndocs/performance.md updated ({report.misses} target(s) missed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
