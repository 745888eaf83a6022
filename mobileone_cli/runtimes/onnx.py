"""ONNX files in onnxruntime (CPU), the ``onnx`` extra."""
from __future__ import annotations

from typing import Any, List

from ..errors import BadInput, VerificationFailed, first_line
from . import Artifact

__all__ = ["load", "require", "graph_io", "INSTALL_HINT"]

INSTALL_HINT = ("pip install 'mobileone-cli[onnx]'  (or the plain packages: "
                "pip install onnx onnxruntime onnxscript)")


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def require() -> None:
    """Refuse early, with the exact install command, when onnx or onnxruntime is missing."""
    missing = [p for p in ("onnx", "onnxruntime") if not _importable(p)]
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
