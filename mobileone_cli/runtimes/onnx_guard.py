"""ONNX graphs from elsewhere, checked before onnxruntime opens them and bounded while they run.

* External data: every tensor stored outside the model (``data_location: EXTERNAL``) names a
  ``location`` relative to the model's folder; it must resolve inside that folder to a regular
  file holding ``offset + length`` bytes (:mod:`.confine`), at most ``MAX_EXTERNAL_BYTES`` in
  all.  onnxruntime would otherwise read ``/dev/zero`` or a FIFO.
* Loops: a MobileOne deploy graph has none.  A ``Loop`` runs only when its trip count is a
  constant of at most ``MAX_LOOP_TRIPS`` (counting the loops around it), ``Scan`` (whose count
  is the length of a runtime tensor) never; subgraphs (``If`` branches, loop bodies) are
  checked the same way (onnxruntime runs a ``Loop`` of 2**62 iterations for as long as it is let).
* Time: each run is stopped after ``ONNX_RUN_SECONDS`` through onnxruntime's
  ``RunOptions.terminate``, set by a watchdog timer (:func:`run_bounded`).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Dict, Iterator, Optional, Tuple

from ..errors import BadInput, printable
from ..rules import limits
from .confine import confined_path

__all__ = ["check_external_data", "check_loops", "check_graph", "run_bounded", "RunTimedOut"]


class RunTimedOut(BadInput):
    """A graph ran longer than ``ONNX_RUN_SECONDS``: exit 2."""


def _tensors(graph) -> Iterator[Any]:
    """Every TensorProto of a graph and its subgraphs (initializers, attribute tensors)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def check_external_data(model, path: str) -> None:
    """Refuse external data outside the model's folder, on special files, or beyond the file
    (see the module doc); nothing is read."""
    import onnx

    base = os.path.dirname(os.path.abspath(path))
    total = 0
    for t in _tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info: Dict[str, str] = {e.key: e.value for e in t.external_data}
        where = f"{path}: tensor {printable(t.name)[:80]!r}"
        real = confined_path(base, base, info.get("location"), where)
        try:
            offset, stated = int(info.get("offset") or 0), info.get("length")
            length = int(stated) if stated is not None else os.path.getsize(real) - offset
        except ValueError:
            raise BadInput(f"{where}: external data offset or length is not a number") from None
        if offset < 0 or length < 0 or offset + length > os.path.getsize(real):
            raise BadInput(f"{where}: external data ({offset:,} + {length:,} bytes) lies beyond "
                           f"its file")
        total += length
        if total > limits.MAX_EXTERNAL_BYTES:
            raise BadInput(f"{path}: more than {limits.MAX_EXTERNAL_BYTES:,} bytes of external "
                           f"data")


def _constants(graph) -> Dict[str, Any]:
    """name -> TensorProto of the graph's initializers and Constant node outputs."""
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    out[node.output[0]] = attr.t
    return out


def _trip_count(node, consts: Dict[str, Any]) -> Optional[int]:
    """The constant trip count of a Loop, or None when it is absent or computed."""
    from onnx import numpy_helper

    if not node.input or not node.input[0] or node.input[0] not in consts:
        return None
    t = consts[node.input[0]]
    if t.data_location != 0 or len(t.dims) > 1 or (t.dims and t.dims[0] != 1):
        return None
    try:
        return int(numpy_helper.to_array(t).reshape(-1)[0])
    except (ValueError, TypeError, IndexError):
        return None


def check_loops(graph, path: str, outer: int = 1, scope: Optional[Dict[str, Any]] = None
                ) -> None:
    """Refuse loops whose iterations are not a small constant (see the module doc)."""
    consts = dict(scope or {})
    consts.update(_constants(graph))
    for node in graph.node:
        trips = 1
        kind = node.op_type if node.domain in ("", "ai.onnx") else None
        where = f"{path}: node {printable(node.name or node.op_type)[:80]!r}"
        if kind == "Scan":
            raise BadInput(f"{where} is a Scan, whose iterations depend on the input; a MobileOne "
                           f"graph has no loops, and this one is not run")
        if kind == "Loop":
            n = _trip_count(node, consts)
            if n is None:
                raise BadInput(f"{where} is a Loop without a constant trip count; a MobileOne "
                               f"graph has no loops, and this one is not run")
            trips = max(0, n)
            if outer * trips > limits.MAX_LOOP_TRIPS:
                around = " (with the loops around it)" if outer > 1 else ""
                raise BadInput(f"{where} is a Loop of {outer * trips:,} iterations{around}, more "
                               f"than the limit of {limits.MAX_LOOP_TRIPS:,}; a MobileOne graph "
                               f"has no loops, and this one is not run")
        for attr in node.attribute:
            subs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for g in subs:
                check_loops(g, path, outer * max(1, trips), consts)


def check_graph(model, path: str) -> None:
    """Every check of this module that needs only the graph."""
    check_external_data(model, path)
    check_loops(model.graph, path)


def run_bounded(sess, feeds: Dict[str, Any], path: str,
                seconds: Optional[float] = None) -> Tuple[Any, ...]:
    """``sess.run(None, feeds)`` stopped after ``seconds`` (``ONNX_RUN_SECONDS``): RunTimedOut."""
    import onnxruntime as ort

    limit = limits.ONNX_RUN_SECONDS if seconds is None else seconds
    options = ort.RunOptions()
    options.log_severity_level = 4  # the stop is reported here, in one line
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        options.terminate = True

    timer = threading.Timer(limit, stop)
    timer.daemon = True
    timer.start()
    try:
        return sess.run(None, feeds, options)
    except Exception:
        if fired.is_set():
            raise RunTimedOut(f"{path}: the graph ran longer than {limit:g} s and was stopped",
                              hint="a MobileOne runs in well under a second per image; this "
                                   "graph is not one") from None
        raise
    finally:
        timer.cancel()
