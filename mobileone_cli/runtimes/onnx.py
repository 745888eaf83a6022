"""ONNX files in onnxruntime (CPU), the ``onnx`` extra."""
from __future__ import annotations

from typing import Any, Dict, List

from ..errors import BadInput, VerificationFailed, first_line
from . import Artifact

__all__ = ["load", "require", "graph_io", "describe", "INSTALL_HINT"]

INSTALL_HINT = ("pip install 'mobileone-cli[onnx]'  (or the plain packages: "
                "pip install onnx onnxruntime onnxscript)")


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def require(packages=("onnx", "onnxruntime")) -> None:
    """Refuse early, with the exact install command, when one of ``packages`` is missing."""
    missing = [p for p in packages if not _importable(p)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise BadInput(f"this needs {' and '.join(missing)}, which {verb} not installed",
                       hint=INSTALL_HINT)


def graph_io(path: str):
    """(opset, input name, output name, input shape, output shape, initializers) of a file."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    onnx.checker.check_model(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def shape(v) -> List[Any]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    inp, out = model.graph.input[0], model.graph.output[0]
    return opset, inp.name, out.name, shape(inp), shape(out), len(model.graph.initializer)


# ONNX element type names -> the names the rest of the tool uses (torch's)
_TORCH_NAMES = {"float": "float32", "double": "float64", "float16": "float16",
                "bfloat16": "bfloat16"}


def _value_info(v) -> Dict[str, Any]:
    import onnx

    t = v.type.tensor_type
    name = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "?"
    dtype = _TORCH_NAMES.get(name, name)
    shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
             for d in t.shape.dim] if t.HasField("shape") else None
    return {"name": v.name, "dtype": dtype, "shape": shape}


def describe(path: str) -> Dict[str, Any]:
    """What an ONNX file holds, as plain data: opsets, graph inputs and outputs (initializers
    that older exporters list as inputs are left out), initializers, nodes.  Needs only onnx."""
    require(("onnx",))
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises protobuf's own types for damaged files
        reason = first_line(str(exc)) or exc.__class__.__name__
        raise BadInput(f"{path}: not a readable ONNX model ({reason})") from None
    try:
        onnx.checker.check_model(model)
        problem = None
    except Exception as exc:  # the checker's ValidationError and protobuf errors
        problem = first_line(str(exc)) or exc.__class__.__name__
    g = model.graph
    inits = {i.name for i in g.initializer}
    elements = 0
    for i in g.initializer:
        n = 1
        for d in i.dims:
            n *= int(d)
        elements += n
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x)
    return {"ir_version": int(model.ir_version), "producer": producer or None,
            "opset": opsets.get("ai.onnx"), "opsets": opsets,
            "inputs": [_value_info(v) for v in g.input if v.name not in inits],
            "outputs": [_value_info(v) for v in g.output],
            "initializers": len(g.initializer), "initializer_elements": elements,
            "nodes": len(g.node), "checker": problem}


def load(path: str) -> Artifact:
    """``path`` in an onnxruntime CPU session."""
    require()
    import onnxruntime as ort
    import torch

    try:
        opset, in_name, _, in_shape, out_shape, inits = graph_io(path)
    except Exception as exc:  # onnx raises its own types for damaged files
        raise BadInput(f"{path}: not a readable ONNX model ({first_line(str(exc))})") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VerificationFailed(f"onnxruntime cannot load {path}: "
                                 f"{first_line(str(exc))}") from None
    meta = sess.get_inputs()[0]
    dtype = "float16" if "float16" in meta.type else "float32"

    def run(x):
        x = x.to(torch.float16 if dtype == "float16" else torch.float32)
        try:
            return torch.from_numpy(sess.run(None, {in_name: x.numpy()})[0])
        except Exception as exc:
            raise VerificationFailed(f"onnxruntime failed at input shape {list(x.shape)}: "
                                     f"{first_line(str(exc))}") from None

    return Artifact(path=path, runtime="onnxruntime", input_name=in_name, input_shape=in_shape,
                    output_shape=out_shape, input_dtype=dtype, run=run,
                    details={"opset": opset, "initializers": inits})
