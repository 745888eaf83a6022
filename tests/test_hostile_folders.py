"""Every read bounded, part two: image folders (``eval`` DATA, ``verify --images``).

One walker serves both.  It never opens a FIFO named ``x.jpg`` (the decoder would block for
ever), a link to ``/dev/stdin`` or ``/dev/zero``, or anything through a link out of DATA (a
class folder linked to ``/`` once walked the whole file system); what it skips is reported.
Decoding holds a shared pixel budget whatever ``--workers`` says, and an image that fails for
lack of memory stops the run (exit 2) instead of being counted unreadable, which would report
the accuracy of a different set of images.
"""
from __future__ import annotations

import os
import shutil
import threading

import pytest
import torch

from mobileone_cli.check.images import list_images, load_images
from mobileone_cli.data import budget as budget_mod
from mobileone_cli.data import pipeline
from mobileone_cli.data.budget import PixelBudget
from mobileone_cli.data.folders import Item, open_dataset
from mobileone_cli.data.pipeline import (DecodeOutOfMemory, ImageError, load_tensor,
                                         make_preprocessing)
from mobileone_cli.data.stream import stream_batches
from mobileone_cli.errors import BadInput

from .hostile import assert_refused, returns_quickly
from .imaging import class_tree, pattern, write_image

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("PIL")

SMALL = make_preprocessing(resize=37, crop=(32, 32))


def hostile_tree(root: str) -> dict:
    """Class folders c0, c1 with real images, plus every entry the walker must not follow."""
    tree = class_tree(root, [2, 2], [(40, 30), (30, 40)])
    os.mkfifo(os.path.join(root, "c0", "x.jpg"))
    os.symlink("/dev/stdin", os.path.join(root, "c0", "stdin.jpg"))
    os.symlink("/dev/zero", os.path.join(root, "c1", "zero.png"))
    os.symlink("/etc/hostname", os.path.join(root, "c1", "outside.jpg"))
    os.symlink(os.path.join("..", "c0", "img00.png"), os.path.join(root, "c1", "alias.png"))
    os.symlink(".", os.path.join(root, "c0", "loop"))  # a folder linking to itself
    os.symlink("/", os.path.join(root, "c2"))  # a class folder linked to the root
    os.symlink("/nonexistent/folder", os.path.join(root, "c3"))
    return tree


def test_class_folders_skip_and_report_what_is_not_inside_data(tmp_path):
    data = str(tmp_path / "data")
    hostile_tree(data)
    ds = returns_quickly(lambda: open_dataset(data, num_classes=2))
    assert ds.class_names == ["c0", "c1"]  # c2 (-> /) is not a class; c3 dangles
    names = [it.name for it in ds.items()]
    assert names == [os.path.join("c0", "img00.png"), os.path.join("c0", "img01.jpg"),
                     os.path.join("c1", "alias.png"), os.path.join("c1", "img00.png"),
                     os.path.join("c1", "img01.jpg")]
    assert ds.total == 5
    note = next(n for n in ds.notes if n.startswith("skipped"))
    assert "skipped 6 entries" in note, note
    for shown in ("'c2' (a link out of DATA)", "'c3' (a dangling link)",
                  f"{os.path.join('c0', 'x.jpg')!r} (a FIFO)"):
        assert shown in note or "and 3 more" in note, note
    assert all(x in note for x in ("'c2'", "'c3'")), note  # folders come first


def test_flat_folder_and_verify_images_use_the_same_walker(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    write_image(str(flat / "a.png"), pattern(40, 30))
    os.mkfifo(flat / "b.jpg")
    os.symlink("/dev/zero", flat / "c.png")
    notes = []
    files = returns_quickly(lambda: list_images(str(flat), notes))
    assert files == [str(flat / "a.png")]
    assert notes and "skipped 2 entries" in notes[0] and "'b.jpg' (a FIFO)" in notes[0], notes
    x, names = returns_quickly(lambda: load_images(str(flat), (32, 32)))
    assert names == ["a.png"] and x.shape == (1, 3, 32, 32)
    ds = open_dataset(str(flat), need_labels=False)
    assert ds.total == 1 and "skipped 2 entries" in ds.notes[0]
    os.remove(flat / "a.png")
    with pytest.raises(BadInput, match="no .png.*skipped 2 entries"):
        list_images(str(flat))


def test_labels_file_entries_are_confined_at_open_time(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_image(str(data / "ok.png"), pattern(40, 30))
    write_image(str(tmp_path / "outside.png"), pattern(40, 30))
    os.mkfifo(data / "late.png")  # a regular file when listed, a FIFO when opened
    (data / "labels.txt").write_text("ok.png 0\n../outside.png 1\n/etc/hostname 0\nlate.png 1\n")
    ds = open_dataset(str(data), labels=str(data / "labels.txt"), num_classes=2)
    bad = []
    batches = returns_quickly(lambda: list(stream_batches(
        ds.items(), SMALL, 4, workers=2, unreadable=lambda it, why: bad.append((it.name, why)),
        root=ds.root)))
    assert [b.names for b in batches] == [["ok.png"]]
    reasons = dict(bad)
    assert "not inside DATA" in reasons["../outside.png"], bad
    assert "not inside DATA" in reasons["/etc/hostname"], bad
    assert "a FIFO" in reasons["late.png"], bad


def test_decoding_holds_the_shared_pixel_budget(tmp_path, monkeypatch):
    """Eight workers on 24 images of 60x50 pixels with room for two at a time: never more
    than two decoded at once, and every image arrives, in order."""
    root = tmp_path / "imgs"
    items = []
    for i in range(24):
        write_image(str(root / f"{i:02d}.png"), pattern(60, 50, salt=i))
        items.append(Item(str(root / f"{i:02d}.png"), f"{i:02d}.png", i % 3))
    tight = PixelBudget(2 * 60 * 50)
    monkeypatch.setattr(budget_mod, "DECODE", tight)
    real = pipeline._to_rgb
    inside = []

    def slow_to_rgb(im):  # widen the window in which decodes could overlap
        inside.append(tight.used)
        threading.Event().wait(0.01)
        return real(im)

    monkeypatch.setattr(pipeline, "_to_rgb", slow_to_rgb)
    got = [n for b in stream_batches(items, SMALL, 5, workers=8, root=str(root)) for n in b.names]
    assert got == [it.name for it in items]
    assert tight.peak == 2 * 60 * 50 and max(inside) <= tight.cap and tight.used == 0


def test_a_request_larger_than_the_budget_runs_alone():
    b = PixelBudget(10)
    with b.hold(1000):
        assert b.used == 10
    assert b.used == 0


@pytest.mark.parametrize("workers", [0, 3])
def test_out_of_memory_while_decoding_stops_the_stream(tmp_path, monkeypatch, workers):
    class_tree(str(tmp_path / "data"), [3, 3], [(40, 30)])
    ds = open_dataset(str(tmp_path / "data"), num_classes=2)
    real = pipeline.transform

    def fails_on_one(image, p):
        if image.size == (40, 30) and fails_on_one.calls == 2:
            raise MemoryError()
        fails_on_one.calls += 1
        return real(image, p)

    fails_on_one.calls = 0
    monkeypatch.setattr(pipeline, "transform", fails_on_one)
    unreadable = []
    with pytest.raises(DecodeOutOfMemory, match="out of memory while decoding this 40x30"):
        list(stream_batches(ds.items(), SMALL, 2, workers=workers,
                            unreadable=lambda it, why: unreadable.append(why), root=ds.root))
    assert unreadable == []


def test_eval_exits_2_when_an_image_runs_out_of_memory(tmp_path, tiny_sd, monkeypatch, run_cli):
    class_tree(str(tmp_path / "data"), [2, 2], [(40, 30)])
    torch.save(tiny_sd, tmp_path / "m.pth")

    def no_memory(im):
        raise MemoryError()

    monkeypatch.setattr(pipeline, "_to_rgb", no_memory)
    res = run_cli("eval", tmp_path / "m.pth", tmp_path / "data", "--resize", "37", "--crop", "32",
                  "--workers", "2")
    assert_refused(res, None, "out of memory while decoding")
    assert "unreadable" not in res.output


def test_unusable_image_paths_are_image_errors_not_hangs(tmp_path):
    os.mkfifo(tmp_path / "f.png")
    with pytest.raises(ImageError, match="a FIFO"):
        returns_quickly(lambda: load_tensor(str(tmp_path / "f.png"), SMALL))
    with pytest.raises(ImageError, match="not inside DATA"):
        load_tensor("/dev/zero", SMALL, root=str(tmp_path))


DECODE_RUN = """
import sys
from mobileone_cli.data.folders import open_dataset
from mobileone_cli.data.pipeline import make_preprocessing
from mobileone_cli.data.stream import stream_batches
ds = open_dataset(sys.argv[1], need_labels=False)
n = sum(len(b.names) for b in stream_batches(ds.items(), make_preprocessing(resize=37,
        crop=(32, 32)), 8, workers=int(sys.argv[2]), root=ds.root))
assert n == ds.total, n
"""


@pytest.mark.slow
def test_decode_memory_does_not_grow_with_workers(tmp_path):
    """Four RGB PNGs at the pixel limit: eight workers peak like one (0.48 GB each here; without
    the shared decode budget eight peak at 1.25 GB)."""
    from PIL import Image

    from mobileone_cli.rules.limits import MAX_IMAGE_PIXELS

    from .hostile import _measured

    side = int(MAX_IMAGE_PIXELS ** 0.5)
    flat = tmp_path / "big"
    flat.mkdir()
    Image.new("RGB", (side, side), (200, 30, 90)).save(flat / "0.png", compress_level=1)
    for i in range(1, 4):  # each file is decoded on its own: copies of one encoding will do
        shutil.copyfile(flat / "0.png", flat / f"{i}.png")
    peaks = {}
    for workers in (1, 8):
        peak = str(tmp_path / f"peak{workers}")
        code = ("import atexit\n"
                "def _peak():\n"
                "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
                f"    open({peak!r}, 'w').write(hwm[0].split()[1])\n"
                "atexit.register(_peak)\n" + DECODE_RUN)
        run = _measured(code, [flat, workers], peak, 600, None, None)
        assert run.exit_code == 0, run.output
        peaks[workers] = run.maxrss_mb
    assert peaks[8] < peaks[1] + 200, peaks  # without the budget: +770 MB
