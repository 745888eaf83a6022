"""ONNX files and onnxruntime (CPU), the ``onnx`` extra.

Two exporters exist in torch.  The ``dynamo`` one (``torch.onnx.export(dynamo=True)``, the default
since torch 2.9, needs onnxscript) writes opset >= 18; the TorchScript one is deprecated but still
present in torch 2.13 and can write older opsets.  ``auto`` takes dynamo when it is usable and the
requested opset allows it, else TorchScript.  Either way the onnxruntime check decides.
A graph from elsewhere is checked before onnxruntime opens it and bounded in time while it
runs (:mod:`.onnx_guard`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..errors import BadInput, VerificationFailed, first_line
from ..rules.limits import MAX_BATCH, MAX_INPUT_SIDE
from ._common import disk_full, quiet
from .base import Artifact, ExportPlan, Runtime
from .onnx_guard import check_graph, run_bounded

__all__ = ["RUNTIME", "load", "require", "graph_io", "describe", "export", "resolve_exporter",
           "INSTALL_HINT", "EXPORTERS", "DYNAMO_MIN_OPSET"]

EXPORTERS = ("auto", "dynamo", "torchscript")
DYNAMO_MIN_OPSET = 18

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


def _dynamo_usable() -> bool:
    import inspect

    import torch

    try:
        has_flag = "dynamo" in inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):
        has_flag = False
    return has_flag and _importable("onnxscript")


def resolve_exporter(exporter: str = "auto", opset: Optional[int] = None) -> str:
    """'dynamo' or 'torchscript' for the requested ``exporter`` and ``opset``."""
    if exporter not in EXPORTERS:
        raise BadInput(f"--exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    low_opset = opset is not None and opset < DYNAMO_MIN_OPSET
    if exporter == "dynamo":
        if not _dynamo_usable():
            raise BadInput("--exporter dynamo needs onnxscript (and torch >= 2.5), which is not "
                           "available", hint=INSTALL_HINT)
        if low_opset:
            raise BadInput(f"--opset {opset}: the dynamo exporter writes opset "
                           f">= {DYNAMO_MIN_OPSET}", hint="use --exporter torchscript for older "
                           "opsets, or leave --exporter at auto")
        return "dynamo"
    if exporter == "torchscript":
        return "torchscript"
    return "dynamo" if (_dynamo_usable() and not low_opset) else "torchscript"


def export(model, path: str, *, sample, dynamic_batch: bool, dynamic_size: bool,
           opset: Optional[int], exporter: str, output_name: str) -> None:
    """Write ``model`` (eval mode) traced on ``sample`` to ``path`` as one ONNX file."""
    import torch

    out_axes: Dict[int, str] = {}
    in_axes: Dict[int, str] = {}
    if dynamic_batch:
        in_axes[0] = out_axes[0] = "batch"
    if dynamic_size:
        in_axes.update({2: "height", 3: "width"})
        if not model.arch.has_head:  # the feature map's size follows the input's
            out_axes.update({2: "out_height", 3: "out_width"})
    with quiet(fd=False), torch.no_grad():
        try:
            if exporter == "dynamo":
                dims = {ax: torch.export.Dim(name, min=1,
                                             max=MAX_BATCH if ax == 0 else MAX_INPUT_SIDE)
                        for ax, name in in_axes.items()}
                torch.onnx.export(model, (sample,), path, dynamo=True, verbose=False,
                                  input_names=["input"], output_names=[output_name],
                                  opset_version=opset, external_data=False,
                                  dynamic_shapes=(dims,) if dims else None)
            else:
                torch.onnx.export(model, (sample,), path, dynamo=False,
                                  input_names=["input"], output_names=[output_name],
                                  opset_version=opset if opset is not None else 17,
                                  dynamic_axes={"input": in_axes, output_name: out_axes}
                                  if in_axes else None, do_constant_folding=True)
        except Exception as exc:  # the exporters raise many types; the message is what matters
            disk_full(exc)
            raise VerificationFailed(f"the {exporter} ONNX exporter failed: "
                                     f"{exc.__class__.__name__}: {first_line(str(exc), 200)}",
                                     hint="run with --exporter torchscript or dynamo to try the "
                                          "other exporter") from None


def graph_io(path: str):
    """(opset, input name, output name, input shape, output shape, initializers) of a file."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    check_graph(model, path)  # before anything reads its external data or runs it
    onnx.checker.check_model(path)  # by path: external data is found beside the model
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


def load(path: str, threads: Optional[int] = None) -> Artifact:
    """``path`` in an onnxruntime CPU session (``threads``: intra-op threads)."""
    require()
    import onnxruntime as ort
    import torch

    try:
        opset, in_name, _, in_shape, out_shape, inits = graph_io(path)
    except BadInput:
        raise
    except Exception as exc:  # onnx raises its own types for damaged files
        raise BadInput(f"{path}: not a readable ONNX model ({first_line(str(exc))})") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
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
            return torch.from_numpy(run_bounded(sess, {in_name: x.numpy()}, path)[0])
        except BadInput:
            raise
        except Exception as exc:
            raise VerificationFailed(f"onnxruntime failed at input shape {list(x.shape)}: "
                                     f"{first_line(str(exc))}") from None

    return Artifact(path=path, runtime="onnxruntime", kind="onnx", input_name=in_name,
                    input_shape=in_shape,
                    output_shape=out_shape, input_dtype=dtype, run=run, weight_dtype=dtype,
                    details={"opset": opset, "initializers": inits, "threads": threads})


class OnnxRuntime(Runtime):
    module = "onnx"
    extension = ".onnx"
    runtime = "onnxruntime"
    extra = "onnx"
    dynamic_size = True
    default_batch = None
    fp16_input = True
    fp16_compute = "float16"  # onnxruntime runs fp16 graphs in fp16 on this CPU
    bounded_batch = False
    pooled_head = False
    options = {"opset": None, "exporter": "auto"}

    def require(self) -> None:
        require()

    def prepare(self, options: Any) -> Dict[str, Any]:
        return {"exporter": resolve_exporter(options.exporter, options.opset)}

    def export(self, net: Any, path: str, *, sample: Any, options: Any, plan: ExportPlan,
               output_name: str, facts: Dict[str, Any], notes: List[str]) -> Dict[str, Any]:
        """The exporter of :meth:`prepare`; under ``auto`` a failed dynamo export falls back to
        the TorchScript one, and the note says so."""
        kwargs = dict(sample=sample, dynamic_batch=plan.batch is None,
                      dynamic_size=plan.dynamic_size, opset=options.opset,
                      output_name=output_name)
        try:
            export(net, path, exporter=facts["exporter"], **kwargs)
        except VerificationFailed as exc:
            if options.exporter != "auto" or facts["exporter"] != "dynamo":
                raise
            notes.append(f"dynamo exporter failed ({exc.message}); used the TorchScript one")
            facts["exporter"] = "torchscript"
            export(net, path, exporter="torchscript", **kwargs)
        return {}

    def load(self, path: str, threads: Optional[int] = None) -> Artifact:
        return load(path, threads=threads)

    def check_written(self, path: str, artifact: Artifact, options: Any, plan: ExportPlan,
                      facts: Dict[str, Any]) -> None:
        facts["opset"] = graph_io(path)[0]
        if options.opset is not None and facts["opset"] != options.opset:
            raise BadInput(f"--opset {options.opset}: the {facts.get('exporter')} exporter wrote "
                           f"opset {facts['opset']}")


RUNTIME = OnnxRuntime()
