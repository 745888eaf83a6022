"""``mobileone verify CKPT ARTIFACT``: an exported artifact against a checkpoint, later.

Two steps, the same as ``export`` makes before it keeps a file: a train-form CKPT is fused in
memory and the fusion judged by :func:`.verdict.judge` (a deploy-form CKPT is taken as is); then
the artifact runs in its runtime and is compared with our deploy model holding its weights
(:func:`.artifact.check_artifact`).  The artifact's precision is read from the file.  A Core ML
package off macOS cannot run: every weight it stores is compared instead, and the report says
it was not executed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..arch.specs import ArchSpec
from ..check.artifact import ShapeCheck, WeightCheck, check_artifact, check_weights, precision_note
from ..check.verdict import Verdict
from ..errors import BadInput
from ..io.source import LoadOptions
from ..rules.limits import check_batch, parse_input_size

__all__ = ["ArtifactReport", "verify_artifact"]


@dataclass
class ArtifactReport:
    arch: ArchSpec
    checkpoint: Dict[str, Any]
    artifact: Dict[str, Any]
    fusion: Optional[Verdict] = None  # train CKPT: the fusion's verdict
    checks: List[ShapeCheck] = field(default_factory=list)
    weights: Optional[WeightCheck] = None
    executed: bool = True
    not_executed: Optional[str] = None
    dtype: str = "fp32"
    rtol: Optional[float] = None
    notes: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        ok = self.fusion is None or self.fusion.passed
        ok = ok and all(c.passed for c in self.checks)
        ok = ok and (self.weights is None or self.weights.passed)
        return ok and (self.executed or self.weights is not None)

    def summary(self) -> str:
        if self.fusion is not None and not self.fusion.passed:
            return f"the checkpoint's fusion: {self.fusion.summary()}"
        if self.weights is not None and not self.weights.passed:
            w = self.weights
            what = (f"missing {w.missing[0]}" if w.missing else f"wrong {w.wrong[0]}" if w.wrong
                    else f"unexpected constant {w.unexpected[0]}")
            return f"the artifact does not hold the deploy weights: {what}"
        bad = next((c for c in self.checks if not c.passed), None)
        if bad is not None:
            return (f"the artifact differs from the deploy model at input {bad.batch}x"
                    f"{self.arch.in_channels}x{bad.height}x{bad.width}: max rel diff "
                    f"{bad.metrics.max_rel:.2e} > bound {bad.tolerance:.2e}")
        parts = []
        if self.checks:
            worst = max(c.metrics.max_rel for c in self.checks)
            parts.append(f"the artifact matches the deploy model in {self.artifact['runtime']} "
                         f"(max rel diff {worst:.2e} at {len(self.checks)} shape(s))")
        if self.weights is not None:
            parts.append(f"its {self.weights.compared} stored weights equal the deploy weights")
        if not self.executed:
            parts.append(self.not_executed or "not executed")
        return "; ".join(parts)


def _shapes(artifact, arch: ArchSpec, batch: int, size: Tuple[int, int]):
    shape = list(artifact.input_shape)
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != arch.in_channels):
        raise BadInput(f"{artifact.path}: takes input {shape}, but the checkpoint's MobileOne "
                       f"takes {arch.in_channels}-channel images")
    h = shape[2] if isinstance(shape[2], int) else size[0]
    w = shape[3] if isinstance(shape[3], int) else size[1]
    dyn_max = artifact.details.get("max_batch")
    if isinstance(shape[0], int) and not dyn_max:
        b = shape[0]
    else:
        b = min(batch, dyn_max or batch)
    check_batch(b, (h, w))
    return [(b, h, w)]


def verify_artifact(ckpt: str, path: str, *, options: Optional[LoadOptions] = None,
                    seed: int = 0, batch: int = 4, input_size: Any = (224, 224),
                    rtol: Optional[float] = None) -> ArtifactReport:
    """A checkpoint (train: fused and judged here; deploy: as is) against an artifact."""
    from ..arch.layouts import remap
    from ..fuse.fusion import fuse_state_dict
    from ..runtimes import load_artifact, target_for
    from .verify import read_side, verify_state_dicts

    size = parse_input_size(input_size)
    side = read_side(ckpt, options or LoadOptions())
    artifact = load_artifact(path)  # refuses a path that no runtime's extension names
    target = target_for(path)
    assert target is not None
    arch = side.arch
    report = ArtifactReport(arch=arch, checkpoint=side.describe(),
                            artifact={"path": path, "runtime": target.runtime,
                                      "input_shape": artifact.input_shape,
                                      "output_shape": artifact.output_shape,
                                      "weight_dtype": artifact.weight_dtype},
                            dtype="fp16" if artifact.weight_dtype == "float16" else "fp32",
                            rtol=rtol, notes=list(side.notes))
    if side.form == "train":
        fused = fuse_state_dict(dict(side.state_dict), arch, eps=side.eps, layout=side.layout)
        report.fusion = verify_state_dicts(side.state_dict, fused, arch, layout=side.layout,
                                           bn_eps=side.eps, seed=seed, batch=1,
                                           input_size=size).verdict
        deploy_sd = remap(fused, arch, side.layout, "apple", "deploy")
    else:
        deploy_sd = remap(side.state_dict, arch, side.layout, "apple", "deploy")
    out = artifact.output_shape
    classes = out[-1] if arch.has_head and len(out) == 2 else None
    if arch.has_head and isinstance(classes, int) and classes != arch.num_classes:
        raise BadInput(f"{path} outputs {classes} classes, but {ckpt} has {arch.num_classes}")
    read = target.read_weights(path, list(deploy_sd), report.dtype)
    if read is not None:
        report.weights = check_weights(read[0], deploy_sd, read[1], report.dtype)
    if not artifact.executes:
        report.executed = False
        report.not_executed = target.not_executed()
        return report
    compute = target.compute(report.dtype)
    report.checks = check_artifact(artifact, deploy_sd, arch, _shapes(artifact, arch, batch, size),
                                   dtype=report.dtype, compute=compute, seed=seed, rtol=rtol)
    note = precision_note(report.checks)
    if note:
        report.notes.append(note)
    return report
