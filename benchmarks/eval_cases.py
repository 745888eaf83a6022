"""`mobileone eval` throughput against a bare forward loop over the same decoded images (target
>= 0.8x its images/s), and its peak RSS at N and 4N images (target: flat, <= 1.1x).

s0, a synthetic calibrated checkpoint with a 1000-class head, 500x375 JPEG files (ImageNet's
typical size) in 10 class folders; each case is a fresh process (common.measure) that reports
the images and seconds of its pass:

  eval    evaluate_files(): decoding + preprocessing (threads) + the train model + the fused
          deploy model + bookkeeping; model loading and fusion are not in the pass;
  bare    the same two models on the same images decoded beforehand: the forward passes alone
          (both include the models' first-call cost once);
  decode  the preprocessing stream alone (the same threads, no model): reported, no target.
"""
from __future__ import annotations

import os

from common import PY, Report, measure, run_once

SETUP = """
import os, sys, numpy as np
from PIL import Image
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.arch.specs import get_arch
arch, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
save_checkpoint(os.path.join(folder, arch + ".pth"),
                random_state_dict(get_arch(arch), form="train", seed=0), force=True)
y, x = np.mgrid[0:375, 0:500]
for i in range(n):
    d = os.path.join(folder, "data", f"class{i % 10}")
    os.makedirs(d, exist_ok=True)
    arr = np.stack([(x * 3 + i) % 256, (y * 5 + x // 7) % 256, (x * y // 97 + 3 * i) % 256], -1)
    Image.fromarray(arr.astype(np.uint8)).save(os.path.join(d, f"{i:05d}.jpg"), quality=90)
"""

CHILD = """
import json, sys, time
import torch
from mobileone_cli.data.folders import open_dataset
from mobileone_cli.data.pipeline import Preprocessing, load_tensor
from mobileone_cli.data.stream import default_workers, stream_batches
from mobileone_cli.jobs.eval import _models, evaluate_files
from mobileone_cli.io.source import LoadOptions
mode, ckpt, data, batch, limit = sys.argv[1:6]
batch, limit, workers = int(batch), int(limit), default_workers()
p = Preprocessing()
if mode == "eval":
    r = evaluate_files(ckpt, data, batch=batch, workers=workers, limit=limit)
    n, s = r.images, r.seconds
elif mode == "decode":
    ds = open_dataset(data, num_classes=1000)
    t = time.perf_counter()
    n = sum(len(b.names) for b in stream_batches(ds.items(limit), p, batch, workers=workers))
    s = time.perf_counter() - t
else:
    ds = open_dataset(data, num_classes=1000)
    xs = [load_tensor(i.path, p) for i in ds.items(limit)]
    _, models, _ = _models(ckpt, (), LoadOptions(), p, "cpu")
    t = time.perf_counter()  # like eval's pass, this includes the models' first-call cost
    with torch.no_grad():
        for i in range(0, len(xs), batch):
            x = torch.stack(xs[i:i + batch])
            for m in models:
                m.run(x).argmax(1)
    n, s = len(xs), time.perf_counter() - t
print(json.dumps({"images": n, "seconds": s}))
"""


def run(report: Report, folder: str, runs: int, quick: bool = False) -> None:
    arch, images, batch = "s0", (32 if quick else 64), 16  # N: several batches, so the
    # decoding queue is full at N already and 4N adds only images
    root = os.path.join(folder, "eval")
    os.makedirs(root, exist_ok=True)
    run_once([PY, "-c", SETUP, arch, root, str(4 * images)])
    ckpt, data = os.path.join(root, arch + ".pth"), os.path.join(root, "data")

    def case(mode: str, n: int, n_runs: int):
        m = measure([PY, "-c", CHILD, mode, ckpt, data, str(batch), str(n)], n_runs, parse=True)
        m["rate"] = sorted(d["images"] / d["seconds"] for d in m["json"])[len(m["json"]) // 2]
        return m

    tag = f"{arch}, {images} JPEG 500x375, batch {batch}"
    ev = report.case(f"eval {tag}", case("eval", images, runs))
    bare = report.case(f"bare forward loop {tag}", case("bare", images, runs))
    dec = case("decode", images, 1)
    # Peak RSS of identical eval runs varies by up to ~100 MiB (which glibc arena the OpenMP and
    # decoding threads' buffers land in): the 4N case is a median of runs too.
    big = report.case(f"eval {arch}, {4 * images} images (memory)",
                      case("eval", 4 * images, runs))
    for label, m in (("eval", ev), ("bare forward loop", bare), ("decoding alone", dec)):
        report.case(f"{label} images/s ({arch}, train + deploy models)",
                    {"value": m["rate"], "unit": "img/s"})
    report.target(f"eval {arch} images/s >= 0.8x bare loop", ev["rate"] / bare["rate"], 0.8,
                  higher_is_better=True)
    report.target(f"eval {arch} peak RSS at {4 * images} images <= 1.1x at {images}",
                  big["rss"] / ev["rss"], 1.1)
