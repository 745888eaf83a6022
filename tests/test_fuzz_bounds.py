"""A bounded fuzz of the "every read bounded" classes (slow tier): random mutations of hostile
tensor views, torch pickles, image folders, package manifests, ONNX loops and external data.

Each input must end in success that this test checks with its own oracle (the claimed bytes of
the views it made, ``realpath`` and ``stat`` of every path the library accepted, the trip counts
it wrote), or in ``BadInput`` (exit 2) with a one-line message; never another exception, never
a hang.  ``MOBILEONE_FUZZ_N`` sets the inputs per class (default 40) and ``MOBILEONE_FUZZ_SEED``
the mutations; each class stops early after ``BUDGET_S`` seconds.
"""
from __future__ import annotations

import io
import json
import os
import random
import stat
import time
import zipfile

import numpy as np
import pytest
import torch

from mobileone_cli.errors import BadInput
from mobileone_cli.io.bounds import claimed_bytes
from mobileone_cli.io.read import load_object
from mobileone_cli.rules import limits

from .hostile import fake_package, returns_quickly

pytestmark = pytest.mark.slow

N = int(os.environ.get("MOBILEONE_FUZZ_N", "40"))
SEED = int(os.environ.get("MOBILEONE_FUZZ_SEED", "30"))
BUDGET_S = 60.0


def cases(name: str):
    """(index, rng) for up to N cases of one class, within BUDGET_S seconds."""
    rng = random.Random(f"{SEED}-{name}")
    start = time.monotonic()
    for i in range(N):
        if time.monotonic() - start > BUDGET_S:
            break
        yield i, rng
    print(f"fuzz {name}: {i + 1} inputs, so far {TALLY}")


TALLY = {"accepted": 0, "refused": 0}


def outcome(fn):
    """fn()'s value, or None when it refused with one line (BadInput)."""
    try:
        value = returns_quickly(fn, 60)
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message, exc.message
        TALLY["refused"] += 1
        return None
    TALLY["accepted"] += 1
    return value


def inside(top: str, path: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(top)
    return real == top or real.startswith(top + os.sep)


# --------------------------------------------------------------------------- tensor views

def random_view(rng: random.Random):
    """A view with random shape, strides (0 included) and offset over a small storage."""
    storage = torch.zeros(rng.randrange(1, 4096))
    dims = rng.randrange(1, 5)
    shape = [rng.choice([0, 1, 2, 7, 1 << rng.randrange(4, 34)]) for _ in range(dims)]
    stride = [0 if d > 4096 and rng.random() < 0.8 else rng.choice([0, 1, 2, rng.randrange(64)])
              for d in shape]
    offset = rng.randrange(0, storage.numel())
    try:
        return storage.as_strided(shape, stride, offset)
    except RuntimeError:  # reaches beyond the storage: torch refuses to make it
        return None


def test_fuzz_tensor_views(tmp_path):
    for i, rng in cases("views"):
        views = [v for v in (random_view(rng) for _ in range(rng.randrange(1, 4))) if v is not None]
        if not views:
            continue
        obj = {f"k{j}": v for j, v in enumerate(views)}
        path = tmp_path / f"v{i}.pth"
        torch.save(obj, path)
        got = outcome(lambda: load_object(str(path)))
        stored = sum({v.untyped_storage().data_ptr(): v.untyped_storage().nbytes()
                      for v in views}.values())
        claimed = sum(claimed_bytes(v) for v in views)
        within = claimed <= stored + max(limits.MAX_VIEW_BYTES, stored)
        assert (got is not None) == within, (i, [(v.shape, v.stride()) for v in views])


def mutate_pickle(rng: random.Random, raw: bytes) -> bytes:
    """A torch zip whose data.pkl has a few random bytes changed (the zip stays valid)."""
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = bytearray(src.read(info))
            if info.filename.endswith("data.pkl"):
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            dst.writestr(info.filename, bytes(data))
    return out.getvalue()


def test_fuzz_mutated_view_pickles(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4).as_strided((2, 300), (1, 0)), "b": torch.ones(3, 5)}, buf)
    for i, rng in cases("pickles"):
        path = tmp_path / f"p{i}.pth"
        path.write_bytes(mutate_pickle(rng, buf.getvalue()))
        got = outcome(lambda: load_object(str(path)))
        if got is not None:
            tensors = [v for v in got[1].values() if isinstance(v, torch.Tensor)] \
                if isinstance(got[1], dict) else []
            assert sum(claimed_bytes(t) for t in tensors if not t.is_meta) <= \
                limits.MAX_VIEW_BYTES + (2 << 20), i


# --------------------------------------------------------------------------- image folders

def test_fuzz_image_folders(tmp_path):
    from mobileone_cli.data.walk import Walker

    targets = ["/dev/zero", "/dev/stdin", "/", "/etc", "..", "../..", ".", "c0", "nowhere",
               "c0/a.png", "../outside.png"]
    for i, rng in cases("folders"):
        data = tmp_path / f"d{i}" / "data"
        for c in range(3):
            (data / f"c{c}").mkdir(parents=True)
            (data / f"c{c}" / "a.png").write_bytes(b"png")
        (data.parent / "outside.png").write_bytes(b"png")
        for j in range(rng.randrange(1, 8)):
            where = data / rng.choice(["", "c0", "c1", "c2"])
            name = rng.choice(["x", "y", "sub", "e"]) + str(j) + rng.choice(
                ["", ".png", ".jpg", ".JPEG"])
            kind = rng.choice(["fifo", "link", "link", "dir"])
            if kind == "fifo":
                os.mkfifo(where / name)
            elif kind == "link":
                os.symlink(rng.choice(targets), where / name)
            else:
                (where / name).mkdir(exist_ok=True)
        walker = Walker(str(data))
        folders = returns_quickly(lambda: walker.folders())
        for f in folders:
            for rel in returns_quickly(lambda: walker.images(f)):
                full = os.path.join(str(data), rel)
                assert inside(str(data), full), (i, rel)
                assert stat.S_ISREG(os.stat(full).st_mode), (i, rel)


# --------------------------------------------------------------------------- packages

def test_fuzz_package_manifests(tmp_path):
    from mobileone_cli.runtimes.confine import check_package


    parts = ["..", ".", "com.apple.CoreML", "weights", "model.mlmodel", "/", "/dev", "zero",
             "link", ""]
    for i, rng in cases("packages"):
        pkg = fake_package(str(tmp_path / f"k{i}"))
        data = os.path.join(pkg, "Data")
        os.symlink(rng.choice(["/dev/zero", "/", "com.apple.CoreML", "../.."]),
                   os.path.join(data, "link"))
        manifest = json.load(open(os.path.join(pkg, "Manifest.json")))
        entry = manifest["itemInfoEntries"][rng.choice("ab")]
        entry["path"] = "/".join(rng.choice(parts) for _ in range(rng.randrange(1, 5)))
        json.dump(manifest, open(os.path.join(pkg, "Manifest.json"), "w"))
        if outcome(lambda: check_package(pkg) or True) is None:
            continue
        for e in manifest["itemInfoEntries"].values():
            assert inside(pkg, os.path.join(data, e["path"])), (i, e["path"])
        for dirpath, dirs, files in os.walk(pkg):
            for n in dirs + files:
                assert inside(pkg, os.path.join(dirpath, n)), (i, n)


# --------------------------------------------------------------------------- ONNX

def test_fuzz_onnx_loops_and_external_data(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper as nh

    from mobileone_cli.runtimes.onnx_guard import check_graph

    from .onnx_graphs import external_model, loop_model

    for i, rng in cases("onnx"):
        if rng.random() < 0.5:
            trips = rng.choice([None, 0, 1, 3, 1024, 1025, 2 ** 31, 2 ** 62, -1])
            model = loop_model(trips)
            if rng.random() < 0.3:  # a computed trip count: the constant becomes an input
                model.graph.initializer[-1].CopyFrom(nh.from_array(np.array([1, 2]), "M"))
            got = outcome(lambda: check_graph(model, "x.onnx") or True)
            const = trips is not None and model.graph.initializer[-1].dims == []
            assert (got is None) == (not const or trips > limits.MAX_LOOP_TRIPS), (i, trips)
        else:
            folder = tmp_path / f"o{i}"
            folder.mkdir()
            (tmp_path / "secret.bin").write_bytes(b"\0" * 256)
            os.symlink(rng.choice(["/dev/zero", "../secret.bin", "w.bin"]), folder / "l.bin")
            location = rng.choice(["w.bin", "l.bin", "../secret.bin", "/dev/zero", "", "sub/..",
                                   "w.bin/..", "./w.bin", "../o{}/w.bin".format(i)])
            offset = rng.choice([None, 0, 64, 192, -1, 10 ** 12])
            length = rng.choice([None, 0, 192, 256, 10 ** 12])
            path = external_model(str(folder), location, offset, length)
            model = onnx.load(path, load_external_data=False)
            if outcome(lambda: check_graph(model, path) or True) is None:
                continue
            real = os.path.join(str(folder), location)
            assert inside(str(folder), real) and stat.S_ISREG(os.stat(real).st_mode), location
            assert (offset or 0) + (length or 0) <= os.path.getsize(real), (offset, length)
