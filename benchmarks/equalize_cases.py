"""What data-free quantization costs: `convert --equalize` against plain `convert`, and
`quant --equalize` against plain `quant`, on the same files and images.

`convert --equalize` fuses in float64, sweeps the equalization over the chain until no scale
moves by more than 2% (s0: ~50 sweeps over 2M weights), and checks the result against the train
model reparameterized alike: target <= 3x plain convert.  `quant --equalize` measures four int8
networks (per-tensor and per-channel, before and after) where plain `quant` measures one, plus
the equalization: target <= 5x plain quant in wall time, and the same memory (one int8 network
alive at a time): <= 1.5x peak RSS.  s0, 224x224, N = 8 synthetic images (--quick: 4).
"""
from __future__ import annotations

import os

from common import MOBILEONE, Report, make_checkpoints, measure


def run(report: Report, folder: str, runs: int, quick: bool = False) -> None:
    n = 4 if quick else 8
    ck = make_checkpoints(folder, {"s0.pth": "s0:train"})["s0.pth"]
    out = os.path.join(folder, "s0_eq.pth")
    conv = report.case("s0 mobileone convert", measure(
        MOBILEONE + ["convert", ck, out, "--force", "--json"], runs))
    conv_eq = report.case("s0 mobileone convert --equalize", measure(
        MOBILEONE + ["convert", ck, out, "--force", "--equalize", "--json"], runs))
    report.target("convert --equalize s0 wall <= 3x convert", conv_eq["wall"] / conv["wall"], 3.0)
    args = ["quant", ck, "--calib-synthetic", str(n), "--scheme", "per-tensor", "--json"]
    quant = report.case(f"s0 mobileone quant --calib-synthetic {n}",
                        measure(MOBILEONE + args, runs))
    quant_eq = report.case(f"s0 mobileone quant --equalize --calib-synthetic {n}",
                           measure(MOBILEONE + args + ["--equalize"], runs))
    report.target("quant --equalize s0 wall <= 5x quant (4 int8 networks measured, not 1)",
                  quant_eq["wall"] / quant["wall"], 5.0)
    report.target("quant --equalize s0 peak RSS <= 1.5x quant", quant_eq["rss"] / quant["rss"],
                  1.5)
