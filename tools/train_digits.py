"""Train the MobileOne networks shipped in mobileone_cli/assets/digits/, reproducibly.

    pip install 'mobileone-cli[train]'          # scikit-learn, for the images
    python tools/train_digits.py                 # trains both into build/digits/, compares
    python tools/train_digits.py --out mobileone_cli/assets/digits   # replaces the shipped files
    python tools/train_digits.py --only digits_s4 --stop-after 3      # the run's first 3 epochs

The images are scikit-learn's copy of the UCI handwritten digits (1,797 8x8 images, 10 classes,
CC BY 4.0; see mobileone_cli/assets/digits/ATTRIBUTION.txt).  Image i is held out when
i % 5 == 0 (360 images), the other 1,437 train.  Each network is described by its YAML config
(digits_s0.yaml, digits_s4.yaml), built in train form (all branches) with Apple's keys, and
trained with SGD + Nesterov momentum (2 epochs of linear warmup, then a cosine schedule) on
images shifted by up to 4 of their 64 pixels (half a source pixel).  Then its BatchNorm running
statistics are measured again over the unshifted training images (a cumulative average in train
mode), so the file holds the statistics of the data it will see.  About a minute per network
on one CPU core.

Everything is seeded, torch runs deterministic algorithms on a fixed number of threads: the same
machine gives the same bytes, another CPU the same accuracy to within an image or two.  The
script prints the held-out top-1 of each network next to the shipped one's, and records the
mean training loss of every epoch (``loss_per_epoch`` in training.json): a run stopped after a
few epochs (``--stop-after``) is compared with the start of the shipped run in seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mobileone_cli.assets import digits as assets  # noqa: E402
from mobileone_cli.data.digits import to_network_input  # noqa: E402
from mobileone_cli.io.write import save_checkpoint  # noqa: E402
from mobileone_cli.models.mobileone import MobileOne  # noqa: E402

SEED = 0
THREADS = 1  # the same sums in the same order anywhere, and no thread stalls on a busy machine
EPOCHS = {"digits_s0": 20, "digits_s4": 20}
BATCH = 64
LR = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-5
WARMUP = 2  # epochs of linear learning-rate warmup: a full rate at once kills stem channels
SHIFT = 4  # pixels of the 64x64 input an image may move each way in training
CALIBRATION_BATCH = 256
HELDOUT_EVERY_EPOCHS = 5  # progress: the held-out top-1 (it changes no weight) every 5 epochs


def say(line: str) -> None:
    """Print a progress line; a reader that went away (``| head``) does not stop the training:
    the rest is not printed, the files are still written."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")


def load_pixels():
    """All 1,797 images as uint8 (N, 8, 8) on 0..255, their labels, and the held-out mask."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    labels = data.target.astype(np.int64)
    heldout = np.arange(len(labels)) % assets.HELDOUT_EVERY == 0
    return pixels, labels, heldout


def shifted(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image moved by a random whole number of pixels in [-SHIFT, SHIFT], background fill."""
    n, _, h, w = x.shape
    fill = float(x.min())
    padded = torch.nn.functional.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=fill)
    dy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * SHIFT + 1, (n,), generator=g)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def calibrate_bn(model: MobileOne, x: torch.Tensor) -> None:
    """Running statistics = the cumulative average over the training images, in train mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for i in range(0, len(x), CALIBRATION_BATCH):
        model(x[i:i + CALIBRATION_BATCH])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1


@torch.no_grad()
def top1(model: MobileOne, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def train(name: str, x_train, y_train, x_test, y_test, log,
          stop_after: Optional[int] = None) -> dict:
    """Train ``name`` on the whole schedule (or its first ``stop_after`` epochs), then measure
    its BatchNorm statistics again; its model, held-out top-1 and loss of every epoch."""
    arch = assets.arch(name)
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    model = MobileOne(arch)
    epochs = EPOCHS[name]
    steps = epochs * math.ceil(len(x_train) / BATCH)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                          weight_decay=WEIGHT_DECAY)
    warm = WARMUP * math.ceil(len(x_train) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm
        else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    losses = []
    for epoch in range(min(epochs, stop_after or epochs)):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            loss = loss_fn(model(shifted(x_train[idx], g)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(x_train))
        heldout = ""
        if (epoch + 1) % HELDOUT_EVERY_EPOCHS == 0 or epoch + 1 == epochs:
            heldout = f", held-out top-1 {top1(model, x_test, y_test):.2%}"
        log(f"  {name} epoch {epoch + 1:2d}/{epochs}: loss {losses[-1]:.4f}{heldout} "
            f"({time.perf_counter() - start:.0f} s)")
    calibrate_bn(model, x_train)
    acc = top1(model, x_test, y_test)
    log(f"  {name}: BatchNorm statistics measured again; held-out top-1 {acc:.2%}")
    return {"model": model, "top1": acc, "epochs": len(losses), "losses": losses,
            "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "digits"),
                        help="folder for the checkpoints, configs and held-out images "
                             "(default: build/digits; mobileone_cli/assets/digits replaces the "
                             "shipped ones)")
    parser.add_argument("--only", choices=assets.NETWORKS, default=None,
                        help="train one network")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after the first N epochs of the schedule (a quick check "
                             "against the shipped run's loss_per_epoch)")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    if args.stop_after is not None and (args.stop_after < 1
                                        or out == os.path.abspath(assets.FOLDER)):
        parser.error("--stop-after takes N >= 1 and another --out than the shipped files")

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    pixels, labels, heldout = load_pixels()
    x_train = to_network_input(pixels[~heldout])
    y_train = torch.from_numpy(labels[~heldout])
    x_test = to_network_input(pixels[heldout])
    y_test = torch.from_numpy(labels[heldout])
    say(f"UCI digits: {len(y_train)} training, {len(y_test)} held-out images; "
        f"torch {torch.__version__}, {THREADS} thread(s)")

    os.makedirs(out, exist_ok=True)
    record_path = os.path.join(out, "training.json")
    shipped_path = os.path.join(assets.FOLDER, "training.json")
    shipped: dict = {}
    if os.path.exists(shipped_path):
        with open(shipped_path, encoding="utf-8") as fh:
            shipped = json.load(fh)
    record = {"networks": {}}
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as fh:
            record = json.load(fh)
    names = [args.only] if args.only else list(assets.NETWORKS)
    for name in names:
        result = train(name, x_train, y_train, x_test, y_test, say, stop_after=args.stop_after)
        sd = {k: v.detach().clone() for k, v in result["model"].state_dict().items()}
        save_checkpoint(os.path.join(out, f"{name}_unfused.pth.tar"), sd, force=True)
        if os.path.abspath(assets.config_path(name)) != os.path.join(out, f"{name}.yaml"):
            shutil.copyfile(assets.config_path(name), os.path.join(out, f"{name}.yaml"))
        record["networks"][name] = {
            "heldout_top1": round(result["top1"], 6),
            "heldout_correct": int(round(result["top1"] * len(y_test))),
            "heldout_images": int(len(y_test)), "training_images": int(len(y_train)),
            "epochs": result["epochs"], "batch": BATCH, "lr": LR, "seed": SEED,
            "threads": THREADS, "shift": SHIFT, "torch": torch.__version__.split("+")[0]}
        # beside "networks": the demo's report quotes a network's entry whole
        record.setdefault("loss_per_epoch", {})[name] = result["losses"]
        ref = shipped.get("networks", {}).get(name, {}).get("heldout_top1")
        curve = shipped.get("loss_per_epoch", {}).get(name, [])[:len(result["losses"])]
        versus = f" (shipped: {ref:.2%})" if ref is not None and args.stop_after is None else ""
        say(f"{name}: held-out top-1 {result['top1']:.2%}{versus} after {result['epochs']} "
            f"epochs ({result['seconds']:.0f} s)")
        if len(curve) == len(result["losses"]):  # the same epochs of the shipped run
            rel = max(abs(a - b) / abs(b) for a, b in zip(result["losses"], curve))
            say(f"  each epoch's loss within {rel:.1e} (relative) of the shipped run's")
    record["dataset"] = ("UCI ML hand-written digits (scikit-learn load_digits), CC BY 4.0; "
                         "see ATTRIBUTION.txt")
    record["heldout"] = f"image i of load_digits() where i % {assets.HELDOUT_EVERY} == 0"
    with open(record_path, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
        fh.write("\n")
    np.savez_compressed(os.path.join(out, "heldout.npz"), pixels=pixels[heldout],
                        labels=labels[heldout].astype(np.uint8),
                        index=np.flatnonzero(heldout).astype(np.int16))
    if os.path.abspath(assets.ATTRIBUTION) != os.path.join(out, "ATTRIBUTION.txt"):
        shutil.copyfile(assets.ATTRIBUTION, os.path.join(out, "ATTRIBUTION.txt"))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
