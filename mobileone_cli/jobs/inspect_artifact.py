"""``mobileone inspect`` of a file ``mobileone export`` wrote (.pte, .tflite, .mlpackage): what
it is, its input and output, dtypes and size, read by opening it in its own runtime."""
from __future__ import annotations

import os
from typing import Any, Dict

from ..errors import BadInput

__all__ = ["inspect_artifact", "artifact_size"]


def artifact_size(path: str) -> int:
    """Bytes of a file, or of every file in a package folder (.mlpackage)."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def inspect_artifact(path: str) -> Dict[str, Any]:
    """The inspect report (``kind`` 'artifact') of an exported model."""
    from ..runtimes import load_artifact, target_for

    target = target_for(path)
    if target is None:
        raise BadInput(f"{path}: not an exported model (.onnx, .pte, .tflite, .mlpackage)")
    art = load_artifact(path)
    details = {k: v for k, v in art.details.items() if isinstance(v, (int, float, str))
               and k != "threads"}
    return {
        "kind": "artifact", "file": path, "file_format": target.extension.lstrip("."),
        "runtime": target.runtime, "size": artifact_size(path),
        "inputs": [{"name": art.input_name, "dtype": art.input_dtype,
                    "shape": list(art.input_shape)}],
        "outputs": [{"dtype": art.input_dtype, "shape": list(art.output_shape)}],
        "weight_dtype": art.weight_dtype, "executes_here": bool(art.executes),
        "executes_on": target.executes_on, "details": details, "health": None,
    }
