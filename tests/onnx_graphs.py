"""Small hand-built ONNX graphs for the hostile-artifact tests: a Loop of a chosen trip count,
external data at a chosen location (test_hostile_external, test_fuzz_bounds).  Import after
``pytest.importorskip("onnx")``.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto as T, helper as h, numpy_helper as nh

def _model(nodes, inits, shape=(1, 3, 8, 8), out="out"):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("input", T.FLOAT, list(shape))],
                     [h.make_tensor_value_info(out, T.FLOAT, list(shape))], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _body(op="Identity", extra=()):
    nodes = [h.make_node("Identity", ["cond_in"], ["cond_out"]), *extra,
             h.make_node(op, ["x_in"] + (["W"] if op == "MatMul" else []), ["x_out"])]
    return h.make_graph(nodes, "body", [
        h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
        h.make_tensor_value_info("x_in", T.FLOAT, None)],
        [h.make_tensor_value_info("cond_out", T.BOOL, []),
         h.make_tensor_value_info("x_out", T.FLOAT, None)])


def loop_model(trips, body=None, shape=(1, 3, 8, 8), extra_inits=()):
    """out = input after ``trips`` iterations of ``body`` (Identity by default); ``trips``
    None: no trip count (runs until the condition turns false)."""
    inits = [nh.from_array(np.array(True), "C"), *extra_inits]
    if trips is not None:
        inits.append(nh.from_array(np.array(trips, dtype=np.int64), "M"))
    loop = h.make_node("Loop", ["M" if trips is not None else "", "C", "input"], ["out"],
                       body=body or _body())
    return _model([loop], inits, shape)


def save(model, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def external_model(folder, location, offset=None, length=None) -> str:
    """An Identity-plus-Add graph whose addend (48 floats of 1.0) is external data at
    ``location``; the real bytes are in ``w.bin``."""
    w = nh.from_array(np.ones((1, 3, 4, 4), dtype=np.float32), "W")
    m = _model([h.make_node("Add", ["input", "W"], ["out"])], [w], shape=(1, 3, 4, 4))
    path = os.path.join(folder, "ext.onnx")
    onnx.save_model(m, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    m = onnx.load(path, load_external_data=False)
    t = m.graph.initializer[0]
    entries = {"location": location, "offset": offset, "length": length}
    del t.external_data[:]
    for k, v in entries.items():
        if v is not None:
            t.external_data.add(key=k, value=str(v))
    onnx.save_model(m, path)
    return path
