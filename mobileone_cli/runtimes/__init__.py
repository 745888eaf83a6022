"""Exported artifacts and the runtimes that execute them, behind one interface.

:func:`load_artifact` opens a file written by ``mobileone export`` in its own runtime and returns
an :class:`Artifact` whose :meth:`~Artifact.run` takes and returns torch tensors, so that checks
(``export``, ``verify CKPT ARTIFACT``), ``eval`` and benchmarks treat every runtime alike.  Each
runtime lives in its own module, is an optional extra, and is imported only when used; a missing
one is a clear BadInput naming what to install.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..errors import BadInput

__all__ = ["Artifact", "Target", "TARGETS", "load_artifact", "ARTIFACT_EXTENSIONS",
           "runtime_for", "target_for", "runtime_module"]


@dataclass(frozen=True)
class Target:
    """What an export target can do; the runtime module ``module`` does the work."""

    module: str  # runtime module in this package
    extension: str
    runtime: str  # the runtime that executes the artifact, as shown to users
    extra: str  # the pip extra that installs it
    dynamic_size: bool  # height and width can stay dynamic in the artifact
    default_batch: Optional[int]  # None: a dynamic batch axis by default
    fp16_input: bool  # an fp16 artifact takes (and returns) float16 tensors
    fp16_compute: str  # the arithmetic of an fp16 artifact on this CPU ('float16'/'float32')
    executes_on: str = "any"  # 'any', or the only platform its runtime runs on ('darwin')


# Measured on this CPU (x86-64): onnxruntime runs fp16 graphs in fp16; ExecuTorch's XNNPACK
# runs fp16 convolutions in fp16; LiteRT's fp16 recipe stores fp16 weights that the interpreter
# dequantizes, so its arithmetic is fp32; Core ML executes only on macOS.
TARGETS: Dict[str, Target] = {t.extension: t for t in (
    Target("onnx", ".onnx", "onnxruntime", "onnx", True, None, True, "float16"),
    Target("executorch", ".pte", "ExecuTorch (XNNPACK)", "executorch", False, 1, True,
           "float16"),
    Target("litert", ".tflite", "LiteRT interpreter", "litert", False, 1, False, "float32"),
    Target("coreml", ".mlpackage", "Core ML", "coreml", False, 1, False, "float16",
           executes_on="darwin"),
)}
# extension -> runtime module
ARTIFACT_EXTENSIONS: Dict[str, str] = {ext: t.module for ext, t in TARGETS.items()}


@dataclass
class Artifact:
    """An exported model opened in its runtime."""

    path: str
    runtime: str  # 'onnxruntime', 'executorch', 'litert', 'coreml'
    input_name: str
    input_shape: List[Any]  # as declared by the file; str for a dynamic axis
    output_shape: List[Any]
    input_dtype: str  # 'float32' or 'float16'
    run: Callable[[Any], Any] = field(repr=False)  # torch.Tensor -> torch.Tensor
    details: Dict[str, Any] = field(default_factory=dict)  # runtime-specific facts (opset, ...)
    weight_dtype: str = "float32"  # precision of the stored weights
    executes: bool = True  # False: the runtime cannot run here (Core ML off macOS); run raises
    kind: str = ""  # the runtime module that opened it ('onnx', 'executorch', ...)


def runtime_for(path: str) -> Optional[str]:
    """The runtime module for ``path``'s extension, or None."""
    t = target_for(path)
    return t.module if t is not None else None


def target_for(path: str) -> Optional[Target]:
    """The export target for ``path``'s extension, or None."""
    low = os.fspath(path).lower().rstrip("/" + os.sep)
    return next((t for ext, t in TARGETS.items() if low.endswith(ext)), None)


def runtime_module(name: str):
    """The runtime module ``name`` ('onnx', 'executorch', 'litert', 'coreml')."""
    import importlib

    return importlib.import_module(f".{name}", __name__)


def load_artifact(path: str, kind: Optional[str] = None, *,
                  threads: Optional[int] = None) -> Artifact:
    """Open ``path`` in its runtime, chosen by the extension or by ``kind`` (one of
    ARTIFACT_EXTENSIONS' values, e.g. 'onnx': a temp file has no telling extension).
    ``threads``: CPU threads of the runtime (default: the runtime's own choice)."""
    path = os.fspath(path)
    mod = kind or runtime_for(path)
    if mod is None:
        raise BadInput(f"{path}: not an exported model (known: "
                       f"{', '.join(ARTIFACT_EXTENSIONS)})")
    package = mod == "coreml"  # an .mlpackage is a folder
    if not (os.path.isdir(path) if package else os.path.isfile(path)):
        raise BadInput(f"{path}: no such {'package folder' if package else 'file'}")
    return runtime_module(mod).load(path, threads=threads)
