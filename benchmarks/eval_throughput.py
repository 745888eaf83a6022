"""Throughput and memory of `mobileone eval` against a bare forward loop over the same images.

    python benchmarks/eval_throughput.py [--arch s0 s4] [--images 64] [--batch 32]
                                         [--workers N] [--device cpu] [--json]

For each architecture (a synthetic, calibrated checkpoint with a 1000-class head; 500x375 JPEG
files in 10 class folders, ImageNet's typical size), each case runs in a fresh process:

  eval      evaluate_files(): decode + preprocess (threads) + train model + fused deploy model +
            the bookkeeping, images/s over the pass (model loading and fusion excluded);
  bare      the same two models on the same images decoded beforehand: the floor of the
            forward passes alone (both include the models' first-call cost once);
  decode    the preprocessing stream alone (the same threads, no model);
  memory    peak RSS of eval at N and at 4N images (flat: the difference is noise).

`eval / bare` near 1 means decoding hides behind the forward passes; below 1, decoding or
bookkeeping costs time.  Nothing here is asserted; the lead wires `run()` into benchmarks/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SETUP = """
import sys, os, numpy as np
sys.path.insert(0, {root!r})
from PIL import Image
from mobileone_cli.io.write import save_checkpoint
from mobileone_cli.models.synthetic import random_state_dict
from mobileone_cli.spec.arch import get_arch
arch, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
save_checkpoint(os.path.join(folder, arch + ".pth"),
                random_state_dict(get_arch(arch), form="train", seed=0), force=True)
y, x = np.mgrid[0:375, 0:500]
for i in range(n):
    d = os.path.join(folder, "data", f"class{{i % 10}}")
    os.makedirs(d, exist_ok=True)
    arr = np.stack([(x * 3 + i) % 256, (y * 5 + x // 7) % 256, (x * y // 97 + 3 * i) % 256], -1)
    Image.fromarray(arr.astype(np.uint8)).save(os.path.join(d, f"{{i:05d}}.jpg"), quality=90)
"""

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from mobileone_cli.data.folders import open_dataset
from mobileone_cli.data.pipeline import Preprocessing, load_tensor
from mobileone_cli.data.stream import stream_batches
from mobileone_cli.evaluate import _models, evaluate_files
from mobileone_cli.io.source import LoadOptions
mode, ckpt, data, batch, workers, device, limit = sys.argv[1:8]
batch, workers, limit = int(batch), int(workers), (int(limit) or None)
p = Preprocessing()
out = {{"mode": mode, "threads": torch.get_num_threads()}}
if mode == "eval":
    r = evaluate_files(ckpt, data, batch=batch, workers=workers, device=device, limit=limit)
    out.update(images=r.images, seconds=r.seconds, forward_seconds=r.forward_seconds)
elif mode == "decode":
    ds = open_dataset(data, num_classes=1000)
    t = time.perf_counter()
    n = sum(len(b.names) for b in stream_batches(ds.items(limit), p, batch, workers=workers))
    out.update(images=n, seconds=time.perf_counter() - t)
else:
    ds = open_dataset(data, num_classes=1000)
    xs = [load_tensor(i.path, p) for i in ds.items(limit)]
    _, models, _ = _models(ckpt, (), LoadOptions(), p, device)
    t = time.perf_counter()  # like eval's pass, this includes the models' first-call cost
    for i in range(0, len(xs), batch):
        x = torch.stack(xs[i:i + batch])
        for m in models:
            m.run(x).argmax(1)
    out.update(images=len(xs), seconds=time.perf_counter() - t)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _child(code: str, *args: Any) -> Dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                         text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}


def run(archs: Sequence[str] = ("s0", "s4"), images: int = 64, batch: int = 32,
        workers: Optional[int] = None, device: str = "cpu") -> List[Dict[str, Any]]:
    """One row per architecture: images/s of eval, bare loop and decoding; peak RSS at N, 4N."""
    from mobileone_cli.data.stream import default_workers

    workers = default_workers() if workers is None else workers
    if images < batch:  # a pass of fewer images than a batch runs smaller batches: less memory
        raise SystemExit(f"--images {images} must be at least --batch {batch}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            folder = os.path.join(tmp, arch)
            os.makedirs(folder)
            _child(SETUP.format(root=ROOT), arch, folder, 4 * images)
            ckpt, data = os.path.join(folder, arch + ".pth"), os.path.join(folder, "data")
            child = CHILD.format(root=ROOT)
            common = (ckpt, data, batch, workers, device)
            ev = _child(child, "eval", *common, images)
            bare = _child(child, "bare", *common, images)
            dec = _child(child, "decode", *common, images)
            big = _child(child, "eval", *common, 4 * images)

            def rate(r: Dict[str, Any]) -> float:
                return r["images"] / r["seconds"]

            rows.append({
                "arch": arch, "images": images, "batch": batch, "workers": workers,
                "device": device, "torch_threads": ev["threads"],
                "eval_images_per_s": rate(ev), "bare_images_per_s": rate(bare),
                "decode_images_per_s": rate(dec), "eval_over_bare": rate(ev) / rate(bare),
                "eval_forward_share": ev["forward_seconds"] / ev["seconds"],
                "peak_rss_mb": {str(images): ev["peak_rss_mb"],
                                str(4 * images): big["peak_rss_mb"]},
                "rss_growth_mb": big["peak_rss_mb"] - ev["peak_rss_mb"]})
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=["s0", "s4"])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    rows = run(a.arch, a.images, a.batch, a.workers, a.device)
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'arch':5} {'eval img/s':>10} {'bare img/s':>10} {'eval/bare':>9} "
          f"{'decode img/s':>12} {'RSS N':>8} {'RSS 4N':>8}")
    for r in rows:
        rss = list(r["peak_rss_mb"].values())
        print(f"{r['arch']:5} {r['eval_images_per_s']:10.1f} {r['bare_images_per_s']:10.1f} "
              f"{r['eval_over_bare']:9.2f} {r['decode_images_per_s']:12.1f} "
              f"{rss[0]:7.0f}M {rss[1]:7.0f}M")
    r = rows[0]
    print(f"({r['images']} and {4 * r['images']} JPEG 500x375 images, batch {r['batch']}, "
          f"{r['workers']} decoding threads, {r['torch_threads']} torch threads, "
          f"{r['device']}; two models per image: train + fused deploy)")


if __name__ == "__main__":
    main()
