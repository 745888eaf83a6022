"""`mobileone quant` against the fp32 forward passes its measurement needs: target <= 2x.

quant fuses the train file, calibrates on N images, then per image runs the fp32 deploy model
(the reference), every block alone int8 on the fp32 block inputs (together one more pass) and
the whole model int8 (the cumulative error): three passes of the deploy model per image.  The
baseline process does exactly the fp32 part of that (load, fuse, three fp32 passes per image on
the same seeded images), so the ratio is what the int8 bookkeeping (observers, fake quantization,
per-channel sums) costs on top.  s0 at 224x224, N = 16 (--quick: 8).
"""
from __future__ import annotations

from common import MOBILEONE, PY, Report, make_checkpoints, measure

BASELINE = """
import sys
import torch
from mobileone_cli.check.harness import load_model
from mobileone_cli.fuse.fusion import fuse_state_dict
from mobileone_cli.io.read import load_checkpoint
from mobileone_cli.arch.specs import get_arch
path, n = sys.argv[1], int(sys.argv[2])
arch = get_arch("s0")
sd = fuse_state_dict(load_checkpoint(path).state_dict, arch)
model = load_model(sd, arch, "deploy", dtype=torch.float32)
with torch.inference_mode():
    for i in range(n):
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(i))
        for _ in range(3):
            model(x)
"""


def run(report: Report, folder: str, runs: int, quick: bool = False) -> None:
    n = 8 if quick else 16
    ck = make_checkpoints(folder, {"s0.pth": "s0:train"})["s0.pth"]
    base = report.case(f"s0 fp32: fuse + 3 forward passes x {n} images",
                       measure([PY, "-c", BASELINE, ck, str(n)], runs))
    quant = report.case(f"s0 mobileone quant --calib-synthetic {n}",
                        measure(MOBILEONE + ["quant", ck, "--calib-synthetic", str(n), "--json"],
                                runs))
    report.target("quant s0 wall <= 2x its fp32 passes", quant["wall"] / base["wall"], 2.0)
    report.target("quant s0 peak RSS <= 2x its fp32 passes", quant["rss"] / base["rss"], 2.0)
