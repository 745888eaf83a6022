"""The protocol every runtime follows, and the opened artifact every runtime returns.

A runtime is one module of this package that defines ``RUNTIME``, an instance of a
:class:`Runtime` subclass, and is listed in :data:`mobileone_cli.runtimes.RUNTIME_MODULES`.  The
export job, the artifact checks and ``verify``/``eval``/``stats --bench`` see runtimes only
through it: what the target can do (its fields), ``plan`` (refusals before any work),
``prepare`` (facts once its packages are there), ``export`` (write the artifact), ``load`` (open
it), ``check_written`` (what it can prove about a written artifact besides executing it) and the
stored-weight rules of the checks.
Nothing here imports torch or a runtime's packages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

__all__ = ["Artifact", "Runtime", "ExportPlan", "PLATFORM_NAMES"]

PLATFORM_NAMES = {"darwin": "macOS", "linux": "Linux", "win32": "Windows"}


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


@dataclass(frozen=True)
class ExportPlan:
    """The shape of one export: ``batch`` None is a dynamic batch (bounded by ``max_batch``
    where the runtime needs a bound); ``dynamic_size``: height and width stay dynamic."""

    batch: Optional[int]
    dynamic_size: bool
    max_batch: Optional[int] = None
    dtype: str = "fp32"


class Runtime:
    """One export target and the runtime that executes its artifacts."""

    module: ClassVar[str]  # this runtime's module in the package ('onnx')
    extension: ClassVar[str]  # of OUT; picks the runtime
    runtime: ClassVar[str]  # the runtime that executes the artifact, as shown to users
    extra: ClassVar[str]  # the pip extra that installs it
    dynamic_size: ClassVar[bool]  # height and width can stay dynamic in the artifact
    default_batch: ClassVar[Optional[int]]  # None: a dynamic batch axis by default
    fp16_input: ClassVar[bool]  # an fp16 artifact takes (and returns) float16 tensors
    fp16_compute: ClassVar[str]  # arithmetic of an fp16 artifact on this CPU ('float16'/'float32')
    executes_on: ClassVar[str] = "any"  # 'any', or the only platform it runs on ('darwin')
    package: ClassVar[bool] = False  # the artifact is a folder
    bounded_batch: ClassVar[bool] = True  # a dynamic batch needs an upper bound (--max-batch)
    pooled_head: ClassVar[bool] = True  # exported with a mean-pool head (no adaptive pooling)
    # ExportOptions fields only this runtime takes -> their default (others must leave them).
    options: ClassVar[Mapping[str, Any]] = {}

    def require(self) -> None:
        """BadInput naming what to install when the runtime's packages are missing."""
        raise NotImplementedError

    def plan(self, options: Any, plan: ExportPlan) -> None:
        """Refuse what this runtime cannot do with ``options`` and ``plan`` (BadInput), before
        any work."""

    def prepare(self, options: Any) -> Dict[str, Any]:
        """Once the runtime's packages are known to be there: facts of the export to come
        (the ONNX exporter that will run)."""
        return {}

    def export(self, net: Any, path: str, *, sample: Any, options: Any, plan: ExportPlan,
               output_name: str, facts: Dict[str, Any], notes: List[str]) -> Dict[str, Any]:
        """Write ``net`` traced on ``sample`` to ``path``; runtime facts for the report.
        ``facts`` (from :meth:`plan`) may be updated with what the export really did."""
        raise NotImplementedError

    def load(self, path: str, threads: Optional[int] = None) -> Artifact:
        raise NotImplementedError

    def check_written(self, path: str, artifact: Artifact, options: Any, plan: ExportPlan,
                      facts: Dict[str, Any]) -> None:
        """What can be proven about a freshly written artifact besides executing it (the
        planned batch, the opset asked for); VerificationFailed or BadInput."""

    def stored_weights(self, deploy_sd: Mapping[str, Any], dtype: str) -> Optional[Dict[str, Any]]:
        """The deploy weights as this runtime stores them in a ``dtype`` artifact (float64), or
        None for the usual rule (fp16: rounded to float16; fp32: float32)."""
        return None

    def read_weights(self, path: str, keys: Any, dtype: str
                     ) -> Optional[Tuple[Dict[str, Any], Dict[str, str]]]:
        """(constants stored in the artifact, {state-dict key: constant name}) where the weights
        can be read back without executing (Core ML off macOS); None elsewhere."""
        return None

    def compute(self, dtype: str) -> str:
        """The arithmetic of a ``dtype`` ('fp32'/'fp16') artifact in this runtime."""
        return self.fp16_compute if dtype == "fp16" else "float32"

    def not_executed(self) -> str:
        where = PLATFORM_NAMES.get(self.executes_on, self.executes_on)
        return f"not executed: {self.runtime} runs only on {where}"
