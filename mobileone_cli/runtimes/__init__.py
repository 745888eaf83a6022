"""Exported artifacts and the runtimes that execute them, behind one interface.

Each runtime is one module listed in :data:`RUNTIME_MODULES` whose ``RUNTIME`` follows
:class:`.base.Runtime` (plan, export, load, check); adding a runtime is adding its module here.
:func:`load_artifact` opens a file written by ``mobileone export`` in its own runtime and returns
an :class:`Artifact` whose :meth:`~Artifact.run` takes and returns torch tensors, so that checks
(``export``, ``verify CKPT ARTIFACT``), ``eval`` and benchmarks treat every runtime alike.  The
runtimes' own packages are optional extras imported only when used; a missing one is a clear
BadInput naming what to install.
"""
from __future__ import annotations

import importlib
import os
from typing import Dict, Optional

from ..errors import BadInput
from .base import Artifact, ExportPlan, Runtime

__all__ = ["Artifact", "Runtime", "ExportPlan", "Target", "TARGETS", "RUNTIME_MODULES",
           "load_artifact", "ARTIFACT_EXTENSIONS", "runtime_for", "target_for",
           "runtime_module", "get_runtime"]

Target = Runtime  # what an export target can do is what its runtime can do

# The runtimes, in the order messages list them.
RUNTIME_MODULES = ("onnx", "executorch", "litert", "coreml")


def runtime_module(name: str):
    """The runtime module ``name`` ('onnx', 'executorch', 'litert', 'coreml')."""
    return importlib.import_module(f".{name}", __name__)


def get_runtime(name: str) -> Runtime:
    """The :class:`Runtime` of module ``name``."""
    return runtime_module(name).RUNTIME


# extension -> runtime (the modules import no runtime package, so listing them is cheap)
TARGETS: Dict[str, Runtime] = {r.extension: r for r in map(get_runtime, RUNTIME_MODULES)}
# extension -> runtime module
ARTIFACT_EXTENSIONS: Dict[str, str] = {ext: t.module for ext, t in TARGETS.items()}


def runtime_for(path: str) -> Optional[str]:
    """The runtime module for ``path``'s extension, or None."""
    t = target_for(path)
    return t.module if t is not None else None


def target_for(path: str) -> Optional[Runtime]:
    """The export target for ``path``'s extension, or None."""
    low = os.fspath(path).lower().rstrip("/" + os.sep)
    return next((t for ext, t in TARGETS.items() if low.endswith(ext)), None)


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
    runtime = get_runtime(mod)
    if not (os.path.isdir(path) if runtime.package else os.path.isfile(path)):
        raise BadInput(f"{path}: no such {'package folder' if runtime.package else 'file'}")
    return runtime.load(path, threads=threads)
