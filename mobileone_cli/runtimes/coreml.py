"""Core ML ML programs (``.mlpackage``), the ``coreml`` extra.

Export: the model is traced (``torch.jit.trace``) and converted with ``coremltools.convert(...,
convert_to="mlprogram")`` at a minimum deployment target (:data:`DEFAULT_DEPLOYMENT_TARGET` by
default) and a compute precision (fp32, or fp16: float16 weights and arithmetic).  A dynamic
batch is a ``RangeDim``.

Core ML executes only on macOS (coremltools' ``predict`` raises elsewhere).  What CAN be checked
everywhere is the package's content: :func:`read_weights` reads every constant straight from the
ML program (``model.mlmodel``, a protobuf) and its weight file (``weights/weight.bin``), without
the Core ML framework.  coremltools names a traced parameter after its state-dict key with '.'
replaced by '_' (and '_to_fp16' appended in fp16), which pairs every constant with its tensor.

Weight file layout (MILBlob storage, little-endian, records 64-byte aligned): a 64-byte header,
then per blob a metadata record at the const's ``blobFileValue.offset``: uint32 sentinel
0xDEADBEEF, uint32 data type, uint64 size in bytes, uint64 absolute offset of the data.
"""
from __future__ import annotations

import math
import os
import struct
import sys
from typing import Any, Dict, List, Optional, Tuple

from ..errors import BadInput, VerificationFailed, first_line, printable
from ._common import quiet
from ._common import require as _require
from .base import Artifact, ExportPlan, Runtime
from .confine import check_package, confined_path, map_confined

__all__ = ["RUNTIME", "DEFAULT_DEPLOYMENT_TARGET", "export", "load", "require", "read_weights",
           "const_name", "can_execute",
           "DEPLOYMENT_TARGETS", "INSTALL_HINT"]

INSTALL_HINT = ("pip install 'mobileone-cli[coreml]'  (or the plain package: "
                "pip install coremltools)")
DEFAULT_DEPLOYMENT_TARGET = "iOS16"
DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14",
                      "macOS15")
_SENTINEL = 0xDEADBEEF
_BLOB_DTYPES = {1: "float16", 2: "float32", 3: "uint8", 4: "int8", 14: "int32"}


def require() -> None:
    _require(("coremltools",), INSTALL_HINT)


def can_execute() -> bool:
    """Core ML runs only on macOS, where coremltools has its native predict binding."""
    if sys.platform != "darwin":
        return False
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True


def const_name(key: str, dtype: str) -> str:
    """The ML program constant holding state-dict tensor ``key``."""
    return key.replace(".", "_") + ("_to_fp16" if dtype == "fp16" else "")


def export(model, path: str, *, sample, max_batch: Optional[int] = None, dtype: str = "fp32",
           deployment_target: str = DEFAULT_DEPLOYMENT_TARGET,
           output_name: str = "logits") -> Dict[str, Any]:
    """Convert ``model`` (fp32, eval mode) traced on ``sample`` to an ``.mlpackage`` at
    ``path`` (a folder).  ``max_batch``: a flexible batch of 1..max_batch."""
    import torch

    require()
    if deployment_target not in DEPLOYMENT_TARGETS:
        raise BadInput(f"--coreml-target {deployment_target!r}: choose one of "
                       f"{', '.join(DEPLOYMENT_TARGETS)}")
    with quiet(), torch.no_grad():
        import coremltools as ct

        shape: Any = tuple(sample.shape)
        if max_batch is not None:
            shape = ct.Shape((ct.RangeDim(1, max_batch, default=1), *sample.shape[1:]))
        try:
            traced = torch.jit.trace(model, sample)
            ml = ct.convert(traced, convert_to="mlprogram",
                            inputs=[ct.TensorType(name="input", shape=shape)],
                            outputs=[ct.TensorType(name=output_name)],
                            minimum_deployment_target=getattr(ct.target, deployment_target),
                            compute_precision=(ct.precision.FLOAT16 if dtype == "fp16"
                                               else ct.precision.FLOAT32))
            ml.user_defined_metadata.pop("com.github.apple.coremltools.conversion_date", None)
            ml.save(path)
        except Exception as exc:  # coremltools raises many types; the message is what matters
            raise VerificationFailed(f"Core ML conversion failed: {exc.__class__.__name__}: "
                                     f"{first_line(str(exc), 200)}") from None
    settle_package(path)
    return {"deployment_target": deployment_target}


def settle_package(path: str) -> None:
    """Make a saved package's bytes depend on the model alone: the specification serialized
    with its maps in sorted order, and the manifest's random item identifiers replaced by ones
    derived from each item's path (so two identical exports are identical byte for byte)."""
    import json
    import uuid

    manifest = os.path.join(path, "Manifest.json")
    with open(manifest, encoding="utf-8") as fh:
        doc = json.load(fh)
    items = doc.get("itemInfoEntries", {})
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, "mobileone:" + info.get("path", old)))
               for old, info in items.items()}
    doc["itemInfoEntries"] = {renamed[k]: v for k, v in sorted(
        items.items(), key=lambda kv: renamed[kv[0]])}
    if doc.get("rootModelIdentifier") in renamed:
        doc["rootModelIdentifier"] = renamed[doc["rootModelIdentifier"]]
    with open(manifest, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=4, sort_keys=True)
    for info in items.values():
        if info.get("name") == "model.mlmodel":
            spec_path = os.path.join(path, "Data", info["path"])
            with quiet():
                from coremltools.proto import Model_pb2

            spec = Model_pb2.Model()
            with open(spec_path, "rb") as fh:
                spec.ParseFromString(fh.read())
            with open(spec_path, "wb") as fh:
                fh.write(spec.SerializeToString(deterministic=True))


def _spec(path: str):
    """The package opened by coremltools (without Core ML), after :func:`confine.check_package`
    has checked every path its manifest names."""
    check_package(path)
    with quiet():
        import coremltools as ct

        return ct.models.MLModel(path, skip_model_load=True)


def _blob(data, offset: int, path: str):
    import numpy as np

    try:
        sentinel, code, nbytes, start = struct.unpack_from("<IIQQ", data, offset)
    except struct.error:
        raise VerificationFailed(f"{path}: a weight record lies beyond the weight file") from None
    if sentinel != _SENTINEL or code not in _BLOB_DTYPES or start + nbytes > len(data):
        raise VerificationFailed(f"{path}: damaged weight record at offset {offset}")
    return np.frombuffer(data, _BLOB_DTYPES[code], count=nbytes // np.dtype(
        _BLOB_DTYPES[code]).itemsize, offset=start)


def _weight_file(path: str, weights_dir: str, name: str) -> str:
    """The resolved weight file a constant names (``@model_path/weights/...``), confined to
    the package's weights folder."""
    prefix = "@model_path/weights/"
    if not weights_dir:
        raise BadInput(f"{path}: a constant names a weight file, but the package has no "
                       f"weights folder")
    if not name.startswith(prefix):
        raise BadInput(f"{path}: a constant names the weight file {printable(name)[:200]!r}, "
                       f"not one under {prefix}")
    return confined_path(path, weights_dir, name[len(prefix):], path)


def read_weights(path: str) -> Dict[str, Any]:
    """Every floating constant of the package's ML program: {name: numpy array} (weights from
    the weight file, small constants from the program itself), read without Core ML."""
    import numpy as np
    from coremltools.proto import MIL_pb2

    require()
    try:
        model = _spec(path)
        spec = model.get_spec()
        weights_dir = model.weights_dir
    except BadInput:
        raise
    except Exception as exc:  # a damaged package: coremltools raises many types
        raise VerificationFailed(f"{path}: not a readable Core ML package "
                                 f"({first_line(str(exc))})") from None
    np_types = {MIL_pb2.FLOAT32: np.float32, MIL_pb2.FLOAT16: np.float16}
    files: Dict[str, Any] = {}
    out: Dict[str, Any] = {}
    for func in spec.mlProgram.functions.values():
        for block in func.block_specializations.values():
            for op in block.operations:
                if op.type != "const":
                    continue
                value = op.attributes["val"]
                tt = value.type.tensorType
                if tt.dataType not in np_types:
                    continue
                shape = [int(d.constant.size) for d in tt.dimensions]
                if value.WhichOneof("value") == "blobFileValue":
                    real = _weight_file(path, weights_dir, value.blobFileValue.fileName)
                    data = map_confined(real, path, files)
                    arr = _blob(data, int(value.blobFileValue.offset), path)
                else:
                    t = value.immediateValue.tensor
                    kind = t.WhichOneof("value")
                    arr = (np.frombuffer(t.bytes.values, np_types[tt.dataType]) if kind == "bytes"
                           else np.asarray(list(getattr(t, kind).values),
                                           dtype=np_types[tt.dataType]))
                if arr.dtype != np_types[tt.dataType] or arr.size != math.prod(shape):
                    raise VerificationFailed(f"{path}: constant {op.outputs[0].name} does not "
                                             f"match its declared type or shape")
                out[op.outputs[0].name] = arr.reshape(shape)
    return out


def load(path: str, threads: Optional[int] = None) -> Artifact:
    """``path`` in Core ML (macOS); elsewhere an Artifact that describes the package and whose
    ``run`` refuses (``executes`` False)."""
    check_package(path)  # before coremltools, which is slow to import, reads anything
    require()
    import numpy as np
    import torch

    try:
        model = _spec(path)
        desc = model.get_spec().description
    except BadInput:
        raise
    except Exception as exc:
        raise VerificationFailed(f"{path}: not a readable Core ML package "
                                 f"({first_line(str(exc))})") from None
    inp, out = desc.input[0], desc.output[0]
    in_shape: List[Any] = [int(d) for d in inp.type.multiArrayType.shape]
    ranges = inp.type.multiArrayType.shapeRange.sizeRanges
    max_batch = None
    if len(ranges) and ranges[0].upperBound != ranges[0].lowerBound:
        in_shape[0] = "batch"
        max_batch = int(ranges[0].upperBound) if ranges[0].upperBound > 0 else None
    fp16 = any(n.endswith("_to_fp16") for n in read_weights(path))
    executes = can_execute()
    ml = None
    if executes:
        with quiet():
            import coremltools as ct

            ml = ct.models.MLModel(path, compute_units=ct.ComputeUnit.CPU_ONLY)

    def run(x):
        if ml is None:
            raise BadInput(f"{path}: not executed: Core ML runs only on macOS")
        got = ml.predict({inp.name: x.to(torch.float32).numpy()})
        return torch.from_numpy(np.asarray(got[out.name], dtype=np.float32))

    return Artifact(path=path, runtime="coreml", kind="coreml", input_name=inp.name,
                    input_shape=in_shape,
                    output_shape=[int(d) for d in out.type.multiArrayType.shape],
                    input_dtype="float32", run=run, weight_dtype="float16" if fp16 else "float32",
                    executes=executes, details={"threads": threads, "max_batch": max_batch})


class CoreMLRuntime(Runtime):
    module = "coreml"
    extension = ".mlpackage"
    runtime = "Core ML"
    extra = "coreml"
    dynamic_size = False
    default_batch = 1
    fp16_input = False
    fp16_compute = "float16"
    executes_on = "darwin"
    package = True
    options = {"coreml_target": DEFAULT_DEPLOYMENT_TARGET}

    def require(self) -> None:
        require()

    def plan(self, options: Any, plan: ExportPlan) -> None:
        if options.coreml_target not in DEPLOYMENT_TARGETS:
            raise BadInput(f"--coreml-target {options.coreml_target!r}: choose one of "
                           f"{', '.join(DEPLOYMENT_TARGETS)}")

    def export(self, net: Any, path: str, *, sample: Any, options: Any, plan: ExportPlan,
               output_name: str, facts: Dict[str, Any], notes: List[str]) -> Dict[str, Any]:
        return export(net, path, sample=sample, max_batch=plan.max_batch, dtype=plan.dtype,
                      deployment_target=options.coreml_target, output_name=output_name)

    def load(self, path: str, threads: Optional[int] = None) -> Artifact:
        return load(path, threads=threads)

    def read_weights(self, path: str, keys: Any, dtype: str
                     ) -> Optional[Tuple[Dict[str, Any], Dict[str, str]]]:
        return read_weights(path), {k: const_name(k, dtype) for k in keys}


RUNTIME = CoreMLRuntime()
