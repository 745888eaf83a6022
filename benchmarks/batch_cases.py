"""Batch conversion of 8 files: `--jobs N` (default: one per core) against `--jobs 1`; target
<= 0.6x the serial wall time on 2 cores."""
from __future__ import annotations

import os

from common import MOBILEONE, Report, make_checkpoints, measure


def run(report: Report, folder: str, runs: int, quick: bool = False) -> None:
    src = os.path.join(folder, "batch_src")
    os.makedirs(src, exist_ok=True)
    make_checkpoints(src, {f"m{i}.pth": "s0:train" for i in range(8)})
    out = os.path.join(folder, "batch_out")
    serial = report.case("batch of 8 s0 files, --jobs 1",
                         measure(MOBILEONE + ["convert", src, out, "--jobs", "1"], runs, [out]))
    jobs = os.cpu_count() or 1
    par = report.case(f"batch of 8 s0 files, --jobs {jobs} (default)",
                      measure(MOBILEONE + ["convert", src, out], runs, [out]))
    report.target(f"batch --jobs {jobs} wall <= 0.6x serial", par["wall"] / serial["wall"], 0.6)
