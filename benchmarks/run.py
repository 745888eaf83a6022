"""Whole-process benchmarks of mobileone, each against a baseline measured in the same run.

    python benchmarks/run.py [--runs 3] [--only convert verify batch ...] [--update-docs]

Sections (one module each): convert (and the torch-free start-up paths), verify, batch.  Each
prints its cases (median wall time and peak RSS of whole processes) and its targets with
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

SECTIONS = ("convert", "verify", "batch")
DOC = os.path.join(ROOT, "docs", "performance.md")
BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per case (median is reported)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--update-docs", action="store_true",
                    help="rewrite the results block in docs/performance.md with this run")
    args = ap.parse_args(argv)
    report = Report()
    tmp = tempfile.mkdtemp(prefix="mobileone-bench-")
    try:
        for name in args.only:
            print(f"section {name} ...", file=sys.stderr, flush=True)
            importlib.import_module(f"{name}_cases").run(report, tmp, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    torch_version = subprocess.run([PY, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    text = report.markdown(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
                           f"{platform.python_version()}, torch {torch_version}; median of "
                           f"{args.runs} runs; sections: {', '.join(args.only)}")
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
