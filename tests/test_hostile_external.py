"""Every read bounded, part three: artifacts from elsewhere (``verify CKPT ARTIFACT``,
``eval --deploy``).

* Files an artifact names stay inside it: an ``.mlpackage`` whose manifest or constants name
  ``/dev/zero`` (read without end), ``/etc/passwd`` or a FIFO (a read that waits for a writer),
  an ONNX model whose external data ``location`` does the same, are refused before any library
  opens them.
* ONNX loops: a ``Loop`` of 2**62 iterations runs for as long as it is let; a loop runs only
  with a small constant trip count, and every run is stopped by a watchdog after a time limit.

Graphs are made with onnx's own helpers; packages by hand where only their folder structure
matters (the checks run before coremltools reads anything), by coremltools where it does.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mobileone_cli.rules import limits

from .hostile import (assert_bounded, assert_one_error, fake_package, refused, returns_quickly,
                      run_bounded)

pytestmark = pytest.mark.usefixtures("one_thread")

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto as T, helper as h, numpy_helper as nh  # noqa: E402

from .onnx_graphs import _body, _model, external_model, loop_model, save  # noqa: E402

from mobileone_cli.runtimes import onnx as ort_runtime  # noqa: E402
from mobileone_cli.runtimes.onnx_guard import RunTimedOut, check_loops  # noqa: E402


# --------------------------------------------------------------------------- ONNX graphs

@pytest.mark.parametrize("trips,needle", [(2 ** 62, "4,611,686,018,427,387,904 iterations"),
                                          (None, "without a constant trip count"),
                                          (limits.MAX_LOOP_TRIPS + 1, "1,025 iterations")])
def test_loops_without_a_small_constant_trip_count_are_refused(tmp_path, trips, needle):
    path = save(loop_model(trips), tmp_path / "loop.onnx")
    refused(lambda: ort_runtime.load(path), needle, "not run")


def test_nested_loops_multiply_and_subgraphs_are_checked(tmp_path):
    inner = loop_model(100).graph.node[0]
    inner_body = _body(extra=[])
    outer_body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]),
         h.make_node("Loop", ["M", "C", "x_in"], ["x_out"], body=inner.attribute[0].g)],
        "outer", list(inner_body.input), list(inner_body.output))
    nested = loop_model(100, body=outer_body)
    refused(lambda: check_loops(nested.graph, "n.onnx"), "10,000 iterations",
            "with the loops around it")
    scan_body = h.make_graph([h.make_node("Identity", ["s"], ["t"])], "sb",
                             [h.make_tensor_value_info("s", T.FLOAT, None)],
                             [h.make_tensor_value_info("t", T.FLOAT, None)])
    then = h.make_graph([h.make_node("Scan", ["input"], ["out"], body=scan_body,
                                     num_scan_inputs=1)], "then", [],
                        [h.make_tensor_value_info("out", T.FLOAT, None)])
    branchy = _model([h.make_node("If", ["C"], ["out"], then_branch=then, else_branch=then)],
                     [nh.from_array(np.array(True), "C")])
    refused(lambda: check_loops(branchy.graph, "if.onnx"), "is a Scan")


def test_a_small_constant_loop_runs(tmp_path):
    path = save(loop_model(3), tmp_path / "ok.onnx")
    art = ort_runtime.load(path)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(art.run(x), x)


def test_every_run_is_stopped_by_the_watchdog(tmp_path, monkeypatch):
    """100,000 iterations of a 256x256 MatMul (seconds even on a fast idle machine): stopped at
    0.2 s."""
    eye = nh.from_array(np.eye(256, dtype=np.float32), "W")
    path = save(loop_model(100_000, body=_body("MatMul"), shape=(256, 256), extra_inits=[eye]),
                tmp_path / "slow.onnx")
    monkeypatch.setattr(limits, "MAX_LOOP_TRIPS", 100_000)
    art = ort_runtime.load(path)
    monkeypatch.setattr(limits, "ONNX_RUN_SECONDS", 0.2)
    with pytest.raises(RunTimedOut, match="ran longer than 0.2 s"):
        returns_quickly(lambda: art.run(torch.eye(256)), 30)


@pytest.mark.slow  # a fresh process (the quick tier: the hostile package's below)
def test_cli_verify_of_a_2_62_loop_is_refused_quickly(tmp_path, tiny_sd):
    torch.save(tiny_sd, tmp_path / "m.pth")
    path = save(loop_model(2 ** 62), tmp_path / "loop.onnx")
    run = run_bounded("verify", tmp_path / "m.pth", path, limit_mb=3000, timeout=120)
    assert run.exit_code == 2 and "Traceback" not in run.output, run.output
    assert_one_error(run.stderr, "Loop of 4,611,686,018,427,387,904 iterations")
    assert_bounded(run, mb=1200, cpu_s=60)


# --------------------------------------------------------------------------- ONNX external data

def test_honest_external_data_loads_and_runs(tmp_path):
    art = ort_runtime.load(external_model(str(tmp_path), "w.bin"))
    x = torch.randn(1, 3, 4, 4)
    assert torch.allclose(art.run(x), x + 1)


@pytest.mark.parametrize("case", ["absolute", "device", "escaping", "fifo", "link-out",
                                  "beyond", "folder"])
def test_external_data_outside_the_model_is_refused(tmp_path, case):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    location, needle, offset = {
        "absolute": ("/etc/passwd", "absolute path", None),
        "device": ("../../../../../../../dev/zero", "outside", None),
        "escaping": ("../secret.bin", "outside", None),
        "fifo": ("pipe.bin", "a FIFO", None),
        "link-out": ("link.bin", "outside", None),
        "beyond": ("w.bin", "beyond its file", 64),
        "folder": ("sub", "a folder", None),
    }[case]
    os.mkfifo(folder / "pipe.bin")
    os.symlink(tmp_path / "secret.bin", folder / "link.bin")
    (folder / "sub").mkdir()
    path = external_model(str(folder), location, offset=offset,
                          length=192 if case == "beyond" else None)
    refused(lambda: returns_quickly(lambda: ort_runtime.load(path)), "tensor 'W'", needle)


# --------------------------------------------------------------------------- .mlpackage

def test_honest_package_structure_passes(tmp_path):
    from mobileone_cli.runtimes.confine import check_package

    check_package(fake_package(str(tmp_path)))


@pytest.mark.parametrize("case,needle", [
    ("manifest-absolute", "absolute path '/etc/passwd'"),
    ("manifest-escaping", "outside"),
    ("weights-escaping", "outside"),
    ("fifo-inside", "is a FIFO"),
    ("device-link", "links outside the package"),
    ("link-out", "links outside the package"),
    ("manifest-fifo", "'Manifest.json' is a FIFO"),
])
def test_package_paths_are_confined(tmp_path, case, needle):
    from mobileone_cli.runtimes.confine import check_package

    pkg = fake_package(str(tmp_path), model_path={"manifest-absolute": "/etc/passwd",
                                                  "manifest-escaping": "../../../../../dev/zero"}
                       .get(case, "com.apple.CoreML/model.mlmodel"),
                       weights_path="../../.." if case == "weights-escaping"
                       else "com.apple.CoreML/weights")
    weights = os.path.join(pkg, "Data", "com.apple.CoreML", "weights")
    if case == "fifo-inside":
        os.mkfifo(os.path.join(weights, "more.bin"))
    if case == "device-link":
        os.remove(os.path.join(weights, "weight.bin"))
        os.symlink("/dev/zero", os.path.join(weights, "weight.bin"))
    if case == "link-out":
        os.symlink("/", os.path.join(pkg, "Data", "root"))
    if case == "manifest-fifo":
        os.remove(os.path.join(pkg, "Manifest.json"))
        os.mkfifo(os.path.join(pkg, "Manifest.json"))
    refused(lambda: returns_quickly(lambda: check_package(pkg)), needle)


def test_constants_name_weight_files_inside_the_weights_folder(tmp_path):
    from mobileone_cli.runtimes.coreml import _weight_file

    pkg = fake_package(str(tmp_path))
    weights = os.path.join(pkg, "Data", "com.apple.CoreML", "weights")
    assert _weight_file(pkg, weights, "@model_path/weights/weight.bin") == os.path.realpath(
        os.path.join(weights, "weight.bin"))
    refused(lambda: _weight_file(pkg, weights, "/etc/passwd"), "not one under @model_path")
    refused(lambda: _weight_file(pkg, weights, "@model_path/weights/../../../../../etc/passwd"),
            "outside")
    os.mkfifo(os.path.join(weights, "p.bin"))
    refused(lambda: _weight_file(pkg, weights, "@model_path/weights/p.bin"), "a FIFO")


def test_cli_verify_of_a_hostile_package_is_refused_in_bounded_memory(tmp_path, tiny_sd):
    """Refused before coremltools is imported (it need not even be installed)."""
    torch.save(tiny_sd, tmp_path / "m.pth")
    pkg = fake_package(str(tmp_path), model_path="../../../../../../../../dev/zero")
    run = run_bounded("verify", tmp_path / "m.pth", pkg, limit_mb=4000, timeout=180)
    assert run.exit_code == 2 and "Traceback" not in run.output, run.output
    assert_one_error(run.stderr, "dev/zero", "outside")
    assert_bounded(run, mb=1500, cpu_s=90)
