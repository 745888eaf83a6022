"""`mobileone verify` (two files, and one file fused in memory) against a verified `convert` of
the same file: target <= 2x its wall time and <= 2x its peak RSS, on s0 and s4 (--quick: s0).
verify checks 4 images by default, convert 1: `--batch 1` is the same work, measured too.
A failing verify (a deploy file with one tampered bias) costs at most 2x a passing one."""
from __future__ import annotations

import os

from common import MOBILEONE, Report, make_checkpoints, measure


def run(report: Report, folder: str, runs: int, quick: bool = False) -> None:
    ck = make_checkpoints(folder, {"s0.pth": "s0:train", "s0_deploy.pth": "s0:deploy",
                                   "s0_tampered.pth": "s0:deploy:stage2.5",
                                   "s0_tampered_late.pth": "s0:deploy:stage4.0",
                                   "s4.pth": "s4:train", "s4_deploy.pth": "s4:deploy"})
    out = os.path.join(folder, "verify_out.pth")
    for arch in ("s0",) if quick else ("s0", "s4"):
        train, deploy = ck[f"{arch}.pth"], ck[f"{arch}_deploy.pth"]
        conv = report.case(f"{arch} convert (verified)",
                           measure(MOBILEONE + ["convert", train, out], runs, [out]))
        # --batch 1: the one image convert checks (verify's default is 4): the same work
        for label, args in (("two files", [train, deploy]), ("one file", [train]),
                            ("two files --batch 1", [train, deploy, "--batch", "1"])):
            m = report.case(f"{arch} verify, {label}", measure(MOBILEONE + ["verify", *args], runs))
            report.target(f"verify {label} {arch} wall <= 2x convert", m["wall"] / conv["wall"],
                          2.0)
            report.target(f"verify {label} {arch} peak RSS <= 2x convert",
                          m["rss"] / conv["rss"], 2.0)
    failing(report, ck, runs)


def failing(report: Report, ck, runs: int) -> None:
    """A failing s0 verify against a passing one: the float64 referee of a failing check judges
    fp32's bad blocks alone, so a late block costs what an early one does (measured both)."""
    train = ck["s0.pth"]
    ok = report.case("s0 verify, passing", measure(MOBILEONE + ["verify", train,
                                                                ck["s0_deploy.pth"]], runs))
    bad = report.case("s0 verify, failing (stage2.5 bias tampered)",
                      measure(MOBILEONE + ["verify", train, ck["s0_tampered.pth"]], runs,
                              codes=(1,)))
    late = report.case("s0 verify, failing (stage4.0 bias tampered)",
                       measure(MOBILEONE + ["verify", train, ck["s0_tampered_late.pth"]], runs,
                               codes=(1,)))
    report.target("verify failing/passing s0 wall <= 2x", bad["wall"] / ok["wall"], 2.0)
    report.target("verify failing (late block)/passing s0 wall <= 2x",
                  late["wall"] / ok["wall"], 2.0)
