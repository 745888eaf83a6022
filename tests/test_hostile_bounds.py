"""Every read bounded, part one: tensors that claim more than their file stores, and text
inputs that are not regular files.

A torch tensor is a view over a storage: a 1.6 KB file can hold a stride-0 tensor of 2**40
elements, which a reader that materialises it holds in full (2 GiB of float32 for 2**29) and
a fusion computes on for minutes.  ``--config``, ``--labels`` and ``--classes`` on
``/dev/zero`` would read without end (``st_size`` is 0 for a device), and on a FIFO wait for a
writer.  Each case is refused in one line, exit 2, before the work: the library-level checks
are exercised directly, and the CLI runs that matter for the process (peak memory, CPU time,
nothing left behind) run in a measured subprocess.
"""
from __future__ import annotations

import os

import pytest
import torch

from mobileone_cli.io.bounds import check_claims, tensors_in
from mobileone_cli.io.read import load_checkpoint, load_object
from mobileone_cli.io.text import read_text, text_lines
from mobileone_cli.rules.limits import MAX_VIEW_BYTES

from .hostile import (assert_bounded, assert_one_error, assert_refused, refused,
                      returns_quickly, run_bounded)


pytestmark = pytest.mark.usefixtures("one_thread")


def broadcast(n: int) -> torch.Tensor:
    """A tensor of ``n`` elements over one stored float: stride 0."""
    return torch.zeros(1).expand(n)


def overlapping(side: int) -> torch.Tensor:
    """A (side, side) tensor over 2 * side - 1 stored floats: row i starts at element i."""
    return torch.zeros(2 * side - 1).as_strided((side, side), (1, 1))


# ------------------------------------------------------------------------ tensor claims

@pytest.mark.parametrize("exponent", [29, 31, 40, 62])
def test_broadcast_tensor_is_refused_at_load(tmp_path, exponent):
    path = tmp_path / "b.pth"
    torch.save({"w": broadcast(2 ** exponent)}, path)
    assert os.path.getsize(path) < 2000
    refused(lambda: load_object(str(path)), "'w'", "broadcast or overlapping view",
            "4 bytes of stored data")


def test_overlapping_and_many_tied_views_are_refused(tmp_path):
    big = overlapping(1 << 13)  # 256 MiB claimed over 32 KiB
    path = tmp_path / "o.pth"
    torch.save({"w": big}, path)
    refused(lambda: load_object(str(path)), "'w'", "256.0 MiB")
    flat = torch.zeros(1 << 18)  # 1 MiB stored, viewed under 200 keys: 200 MiB claimed
    path = tmp_path / "tied.pth"
    torch.save({f"k{i}": flat for i in range(200)}, path)
    refused(lambda: load_checkpoint(str(path)), "200.0 MiB over 1.0 MiB")


def test_nested_views_are_found_wherever_they_sit(tmp_path):
    """Not only the state dict: inspect describes every tensor of a file."""
    path = tmp_path / "n.pth"
    torch.save({"state_dict": {"a": torch.ones(3)}, "optimizer": {"state": [broadcast(2 ** 40)]}},
               path)
    refused(lambda: load_object(str(path)), "'optimizer.state.0'")


def test_honest_views_still_load(tmp_path, tiny_sd):
    """Views a real checkpoint holds: a transpose, slices of one flat buffer, one weight tied
    under two keys, a small broadcast buffer (HF's position_ids), empty tensors."""
    flat = torch.randn(1000)
    sd = {"t": torch.randn(30, 20).t(), "a": flat[:400], "b": flat[400:].view(20, 30),
          "tied1": tiny_sd["linear.weight"], "tied2": tiny_sd["linear.weight"],
          "pos": torch.arange(512).expand(1, 512), "small": broadcast(1000),
          "empty": torch.zeros(0, 1 << 40)[:, :0]}
    path = tmp_path / "ok.pth"
    torch.save(sd, path)
    _, obj, *_ = load_object(str(path))
    assert torch.equal(obj["b"], flat[400:].view(20, 30)) and obj["small"].shape == (1000,)
    check_claims(tensors_in(obj), "x")


def test_the_allowance_is_the_larger_of_the_limit_and_the_stored_bytes():
    one = torch.zeros(1)
    check_claims([("n", 3), ("s", "text"), ("none", None)], "x")  # not tensors: not views
    check_claims([("w", one.expand(MAX_VIEW_BYTES // 4))], "x")  # 4 bytes + 64 MiB: allowed
    refused(lambda: check_claims([("w", one.expand(MAX_VIEW_BYTES // 4 + 2))], "x"), "'w'")
    big = torch.zeros(MAX_VIEW_BYTES // 2)  # 128 MiB stored: tied three times is refused
    check_claims([("a", big), ("b", big)], "x")
    refused(lambda: check_claims([("a", big), ("b", big), ("c", big), ("d", big)], "x"))


def test_inspect_of_a_broadcast_file_is_bounded(tmp_path):
    path = tmp_path / "b40.pth"
    torch.save({"w": broadcast(2 ** 40)}, path)
    run = run_bounded("inspect", path, limit_mb=1500, timeout=120)
    assert run.exit_code == 2 and "Traceback" not in run.output, run.output
    assert_one_error(run.stderr, "'w'", "4.0 TiB", "broadcast")
    assert_bounded(run, mb=600, cpu_s=30)


@pytest.mark.slow  # a fresh process (the quick tier: inspect of a broadcast file's)
def test_convert_with_one_huge_view_is_bounded(tmp_path, tiny_sd):
    """A MobileOne plus one 2**40-element key (a neck tensor, copied through unchanged)."""
    sd = dict(tiny_sd, **{"neck.big": broadcast(2 ** 40)})
    torch.save(sd, tmp_path / "s0big.pth")
    dst = tmp_path / "out" / "d.pth"
    dst.parent.mkdir()
    run = run_bounded("convert", tmp_path / "s0big.pth", dst, limit_mb=2000, timeout=120)
    assert run.exit_code == 2 and "Traceback" not in run.output, run.output
    assert_one_error(run.stderr, "'neck.big'", "4.0 TiB")
    assert_bounded(run, mb=900, cpu_s=40)
    assert os.listdir(dst.parent) == []


# ------------------------------------------------------------------------ text inputs

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("what", ["model config", "labels file", "classes file"])
def test_devices_and_fifos_are_not_text_files(fifo, what):
    for path, kind in (("/dev/zero", "a character device"), (fifo, "a FIFO"),
                       (os.path.dirname(fifo), "a directory")):
        refused(lambda: returns_quickly(lambda: read_text(path, what)), kind, what)
        refused(lambda: returns_quickly(lambda: list(text_lines(path, what, 100))), kind)


def test_a_link_to_a_device_is_followed_then_refused(tmp_path):
    os.symlink("/dev/zero", tmp_path / "labels.txt")
    refused(lambda: read_text(str(tmp_path / "labels.txt"), "labels file"), "a character device")


def test_the_cap_holds_while_reading(tmp_path, monkeypatch):
    """A file that is small when checked and large when read (it grew, or st_size lied):
    at most cap + 1 bytes are read."""
    path = tmp_path / "grow.txt"
    path.write_text("a\n" * 10)
    real_stat = os.stat

    def small_stat(p, *a, **kw):
        st = real_stat(p, *a, **kw)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid,
                               st.st_gid, 0, st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(os, "stat", small_stat)
    assert read_text(str(path), "labels file", cap=20) == "a\n" * 10
    refused(lambda: read_text(str(path), "labels file", cap=19), "more than 19 bytes")
    refused(lambda: list(text_lines(str(path), "labels file", 100, cap=7)), "more than 7 bytes")


def test_text_errors_are_one_line(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    refused(lambda: read_text(str(tmp_path / "bin.txt"), "classes file"), "not a UTF-8")
    refused(lambda: read_text(str(tmp_path / "none.txt"), "classes file"),
            "no such classes file")


def test_cli_config_on_dev_zero_is_refused_in_bounded_memory(tmp_path):
    run = run_bounded("stats", "--config", "/dev/zero", limit_mb=1500, timeout=60, cwd=tmp_path)
    assert run.exit_code == 2 and "Traceback" not in run.output, run.output
    assert_one_error(run.stderr, "/dev/zero", "a character device", "model config")
    assert_bounded(run, mb=400, cpu_s=20)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("option", ["--labels", "--classes"])
def test_cli_eval_labels_and_classes_on_devices_and_fifos(tmp_path, tiny_sd, fifo, option,
                                                        run_cli):
    pytest.importorskip("PIL")
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_sd, ckpt)
    (tmp_path / "data" / "c0").mkdir(parents=True)
    for path, kind in (("/dev/zero", "a character device"), (fifo, "a FIFO")):
        res = returns_quickly(lambda: run_cli("eval", ckpt, tmp_path / "data", option, path))
        assert_refused(res, None, path, kind)
