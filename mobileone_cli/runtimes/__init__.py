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

__all__ = ["Artifact", "load_artifact", "ARTIFACT_EXTENSIONS", "runtime_for"]

# extension -> (runtime module, runtime name shown to users)
ARTIFACT_EXTENSIONS: Dict[str, str] = {".onnx": "onnx"}


@dataclass
class Artifact:
    """An exported model opened in its runtime."""

    path: str
    runtime: str  # 'onnxruntime', ...
    input_name: str
    input_shape: List[Any]  # as declared by the file; str for a dynamic axis
    output_shape: List[Any]
    input_dtype: str  # 'float32' or 'float16'
    run: Callable[[Any], Any] = field(repr=False)  # torch.Tensor -> torch.Tensor
    details: Dict[str, Any] = field(default_factory=dict)  # runtime-specific facts (opset, ...)


def runtime_for(path: str) -> Optional[str]:
    """The runtime module for ``path``'s extension, or None."""
    low = os.fspath(path).lower()
    return next((mod for ext, mod in ARTIFACT_EXTENSIONS.items() if low.endswith(ext)), None)


def load_artifact(path: str, kind: Optional[str] = None) -> Artifact:
    """Open ``path`` in its runtime, chosen by the extension or by ``kind`` (a key of
    ARTIFACT_EXTENSIONS' values, e.g. 'onnx': a temp file has no telling extension)."""
    import importlib

    path = os.fspath(path)
    mod = kind or runtime_for(path)
    if mod is None:
        raise BadInput(f"{path}: not an exported model (known: "
                       f"{', '.join(ARTIFACT_EXTENSIONS)})")
    if not os.path.isfile(path):
        raise BadInput(f"{path}: no such file")
    return importlib.import_module(f".{mod}", __name__).load(path)
