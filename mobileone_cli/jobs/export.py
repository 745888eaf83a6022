"""``export``: a MobileOne checkpoint to a runtime artifact, proven in that runtime.

The target is chosen by OUT's extension (:data:`runtimes.TARGETS`): ``.onnx`` (onnxruntime),
``.pte`` (ExecuTorch, XNNPACK delegate), ``.tflite`` (LiteRT), ``.mlpackage`` (Core ML ML program).
Train-form input is fused and the fusion judged first (:func:`convert.convert_file`, the rule of
:func:`check.verdict.judge`).  The artifact is written to a temporary name, then executed in its
runtime on seeded images at every shape it claims to accept and compared with our deploy model
holding exactly its weights (:mod:`check.artifact`); it is renamed to OUT only if that passes.
Core ML executes only on macOS: elsewhere every weight stored in the package is read back and
compared with the deploy weights, and the result says the package was not executed.
torch is imported inside the functions.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..check.artifact import ShapeCheck, WeightCheck, check_shapes
from ..errors import BadInput, VerificationFailed
from ..io.leftovers import stale_note
from ..io.source import LoadOptions
from ..io.write import atomic_write
from ..rules.limits import MAX_BATCH, check_batch
from ..rules.limits import MAX_INPUT_SIDE as MAX_SIDE
from ..rules.tolerances import EXPORT_RTOL
from ..runtimes import TARGETS, ExportPlan, Runtime, get_runtime, target_for
from ..runtimes.coreml import DEFAULT_DEPLOYMENT_TARGET
from ..runtimes.onnx import EXPORTERS, resolve_exporter
from ..runtimes.onnx import export as export_model
from ..timing import Steps

__all__ = ["ExportOptions", "ExportResult", "ShapeCheck", "export_file", "export_model",
           "check_onnx", "check_shapes", "require_onnx", "resolve_exporter", "EXPORT_RTOL",
           "EXPORTERS", "DEFAULT_MAX_BATCH"]

DEFAULT_MAX_BATCH = 32  # a dynamic batch of a mobile artifact: 1..32 (ExecuTorch plans for it)


@dataclass
class ExportResult:
    src: str
    dst: str
    detection: Any  # detect.Detection
    fused: bool  # the input was train-form and was fused on the way
    fusion_metrics: Any  # train (eval) vs our deploy model, when fused and verified
    exporter: Optional[str]  # ONNX only
    opset: Optional[int]  # ONNX only
    dtype: str
    input_name: str
    output_name: str
    input_shape: List[Any]
    output_shape: List[Any]
    rtol: Optional[float]  # --rtol, when it replaced the adaptive tolerance
    checks: List[ShapeCheck] = field(default_factory=list)
    size_out: int = 0
    notes: List[str] = field(default_factory=list)
    target: str = "onnx"  # runtime module
    runtime: str = "onnxruntime"  # shown to users
    executed: bool = True  # False: not run (Core ML off macOS), see not_executed
    not_executed: Optional[str] = None
    weights: Optional[WeightCheck] = None  # stored weights read back (Core ML)
    details: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step (-v)


def require_onnx() -> None:
    get_runtime("onnx").require()


def check_onnx(path: str, deploy_sd, arch, shapes, *, dtype: str = "fp32", seed: int = 0,
               rtol: Optional[float] = None) -> List[ShapeCheck]:
    """An ONNX file in onnxruntime against our deploy model (see :mod:`check.artifact`)."""
    from ..check.artifact import check_artifact
    from ..runtimes import load_artifact

    return check_artifact(load_artifact(path, kind="onnx"), deploy_sd, arch, shapes, dtype=dtype,
                          compute=get_runtime("onnx").compute(dtype), seed=seed, rtol=rtol)


@dataclass
class ExportOptions(LoadOptions):
    """How ``export`` writes and checks an artifact (the reading options come from LoadOptions).

    ``batch``: an int fixes it, None makes it dynamic, 'auto' is the target's default (dynamic
    for .onnx, 1 for the mobile targets).  ``dynamic_size``: None is the target's default
    (dynamic for .onnx; the mobile targets have fixed height and width)."""

    input_size: Tuple[int, int] = (224, 224)
    batch: Union[int, None, str] = "auto"
    dynamic_size: Optional[bool] = None
    max_batch: Optional[int] = None  # upper bound of a dynamic batch (mobile targets)
    opset: Optional[int] = None  # .onnx
    dtype: str = "fp32"
    exporter: str = "auto"  # .onnx
    coreml_target: str = DEFAULT_DEPLOYMENT_TARGET  # .mlpackage minimum deployment target
    force: bool = False
    verify: bool = True  # check the fusion against the train model (train-form input)
    seed: int = 0
    rtol: Optional[float] = None


def _plan(o: ExportOptions, dst: str) -> Tuple[Runtime, ExportPlan]:
    """The target's runtime and the shape of the export, or BadInput before any work."""
    target = target_for(dst)
    if target is None or os.fspath(dst).rstrip("/" + os.sep) != os.fspath(dst):
        raise BadInput(f"{dst}: OUT must end in one of {', '.join(TARGETS)} (the extension "
                       f"picks the runtime)")
    if o.dtype not in EXPORT_RTOL:
        raise BadInput(f"--dtype {o.dtype!r}: choose one of {', '.join(EXPORT_RTOL)}")
    batch = target.default_batch if o.batch == "auto" else o.batch
    if isinstance(batch, str):
        raise BadInput(f"--batch {batch!r}: give a number or 'dynamic'")
    dynamic_size = target.dynamic_size if o.dynamic_size is None else o.dynamic_size
    if dynamic_size and not target.dynamic_size:
        raise BadInput(f"a dynamic height and width: {target.extension} artifacts have a fixed "
                       f"input size", hint="leave it out (--input-size sets the size), or "
                                           "export .onnx")
    for other in TARGETS.values():  # options that belong to another runtime keep their default
        for name, default in other.options.items():
            if name not in target.options and getattr(o, name) != default:
                raise BadInput(f"--{name.replace('_', '-')} applies to {other.extension} only, "
                               f"not {target.extension}")
    max_batch = None
    if batch is None and target.bounded_batch:
        max_batch = o.max_batch or DEFAULT_MAX_BATCH
        if not 1 <= max_batch <= MAX_BATCH:
            raise BadInput(f"--max-batch {max_batch}: must be between 1 and {MAX_BATCH}")
    elif o.max_batch is not None:
        bounded = ", ".join(t.extension for t in TARGETS.values() if t.bounded_batch)
        raise BadInput(f"--max-batch bounds a dynamic batch of a {_or(bounded)}",
                       hint="use it with --batch dynamic")
    plan = ExportPlan(batch=batch, dynamic_size=dynamic_size, max_batch=max_batch,
                      dtype=o.dtype)
    target.plan(o, plan)
    h, w = o.input_size
    _validate_shape((h, w), batch)
    return target, plan


def _or(listed: str) -> str:
    """'.pte, .tflite, .mlpackage' -> '.pte, .tflite or .mlpackage'."""
    head, _, last = listed.rpartition(", ")
    return f"{head} or {last}" if head else last


def _validate_shape(input_size: Tuple[int, int], batch: Optional[int]) -> None:
    h, w = input_size
    if not (2 <= h <= MAX_SIDE and 2 <= w <= MAX_SIDE):
        raise BadInput(f"--input-size {h} {w}: each side must be between 2 and {MAX_SIDE}")
    if batch is not None:
        check_batch(batch, (h, w))
    else:  # a dynamic batch is checked at 3 images
        check_batch(3, (h + 32, w + 64), option="--input-size (checked at batch 3)")


def _deploy(src: str, o: ExportOptions, input_size):
    """Load, fuse (and judge the fusion): (convert result, Apple-key deploy state dict)."""
    from ..arch.layouts import schema
    from .convert import ConvertOptions, convert_file

    load = {f.name: getattr(o, f.name) for f in dataclasses.fields(LoadOptions)}
    conv = convert_file(src, None, ConvertOptions(**load, layout_out="apple", fuse=True,
                                                  verify=o.verify, seed=o.seed,
                                                  input_size=input_size))
    det = conv.detection
    out = conv.state_dict or {}
    deploy_sd = {e.key: out[det.prefix + e.key] for e in schema(det.arch, "apple", "deploy")}
    conv.state_dict = None
    return conv, deploy_sd


def export_file(src: str, dst: str, options: Optional[ExportOptions] = None,
                **overrides: Any) -> ExportResult:
    """Load ``src`` (any layout, train or deploy form), fuse if needed, export to ``dst`` (the
    extension picks the target), check in the target's runtime, write.

    ``options`` (or keyword overrides of its fields) say how.  Nothing is written unless every
    check passes."""
    o = dataclasses.replace(options or ExportOptions(), **overrides)
    src, dst = os.fspath(src), os.fspath(dst)
    h, w = o.input_size
    input_size = (h, w)
    target, plan = _plan(o, dst)
    batch = plan.batch
    from ..io.write import check_destination

    check_destination(dst, force=o.force, src=src, what=f"path ending in {target.extension}",
                      package=target.package)
    target.require()
    facts = target.prepare(o)

    import torch

    from ..check.harness import check_room, load_model
    from ..rules.limits import check_seed

    check_seed(o.seed)
    conv, deploy_sd = _deploy(src, o, input_size)
    steps = Steps()
    steps.seconds.update(conv.timings or {})
    det = conv.detection
    shapes = check_shapes(batch, input_size, plan.dynamic_size)
    check_room(det.arch, max(s[1:] for s in shapes), max(s[0] for s in shapes),
               f"the {target.runtime} check")
    if o.dtype == "fp16":
        bad = [k for k, v in deploy_sd.items()
               if not bool(torch.isfinite(v.to(torch.float16)).all())]
        if bad:
            raise VerificationFailed(f"{src}: {bad[0]} does not fit in float16 (values beyond "
                                     f"+-65504); export in fp32")
    net = load_model(deploy_sd, det.arch, "deploy", dtype=torch.float32)
    half_net = o.dtype == "fp16" and target.fp16_input
    if target.pooled_head:
        from ..models.mobileone import MeanPoolHead

        net = MeanPoolHead(net)
    if half_net:
        net = net.half()
    # Trace on batch 2 when the batch is dynamic: size-1 axes get specialised by torch.export.
    sample = torch.zeros(batch or 2, det.arch.in_channels, *input_size,
                         dtype=torch.float16 if half_net else torch.float32)
    output_name = "logits" if det.arch.has_head else "features"
    result = ExportResult(src=src, dst=dst, detection=det, fused=det.form == "train",
                          fusion_metrics=conv.metrics, exporter=facts.get("exporter"),
                          opset=None,
                          dtype=o.dtype, input_name="input", output_name=output_name,
                          input_shape=[], output_shape=[], rtol=o.rtol, notes=list(conv.notes),
                          target=target.module, runtime=target.runtime)
    write = _timed(steps, f"export ({target.runtime})",
                   _write_step(result, target, net, sample, o, plan, facts))
    check = _timed(steps, f"{target.runtime} check",
                   _check_step(result, target, deploy_sd, det.arch, o, plan, facts, input_size))
    if target.package:
        from ..io.package import atomic_write_dir

        result.size_out = atomic_write_dir(dst, write, force=o.force, check=check)
    else:
        result.size_out = atomic_write(dst, write, force=o.force, check=check)
    result.notes += filter(None, [stale_note(dst)])
    result.timings = steps.seconds
    return result


def _timed(steps: Steps, name: str, fn: Callable[[str], None]) -> Callable[[str], None]:
    """``fn(tmp)`` run as the step ``name`` (timed for -v, shown as progress)."""
    def run(tmp: str) -> None:
        with steps(name):
            fn(tmp)

    return run


def _write_step(result: ExportResult, target: Runtime, net, sample, o: ExportOptions,
                plan: ExportPlan, facts: Dict[str, Any]):
    """``write(tmp)`` for atomic_write: the runtime's exporter."""
    def write(tmp: str) -> None:
        result.details.update(target.export(net, tmp, sample=sample, options=o, plan=plan,
                                            output_name=result.output_name, facts=facts,
                                            notes=result.notes) or {})
        result.exporter = facts.get("exporter")

    return write


def _check_step(result: ExportResult, target: Runtime, deploy_sd, arch, o: ExportOptions,
                plan: ExportPlan, facts: Dict[str, Any], input_size):
    """``check(tmp)`` for atomic_write: the artifact in its runtime (where it cannot run here,
    its weights read back) against our deploy model; raises VerificationFailed on a mismatch."""
    def check(tmp: str) -> None:
        from ..check.artifact import check_artifact, precision_note
        from ..runtimes import load_artifact

        artifact = load_artifact(tmp, kind=target.module)
        target.check_written(tmp, artifact, o, plan, facts)
        result.opset = facts.get("opset")
        result.input_name, result.input_shape = artifact.input_name, artifact.input_shape
        result.output_shape = artifact.output_shape
        if plan.max_batch is not None:
            result.input_shape = [f"1..{plan.max_batch}"] + list(artifact.input_shape[1:])
        _check_stored_weights(result, target, tmp, deploy_sd)
        if not artifact.executes:
            result.executed = False
            result.not_executed = target.not_executed()
            return
        result.checks = check_artifact(artifact, deploy_sd, arch,
                                       check_shapes(plan.batch, input_size, plan.dynamic_size),
                                       dtype=o.dtype, compute=target.compute(o.dtype),
                                       seed=o.seed, rtol=o.rtol)
        note = precision_note(result.checks)
        if note:
            result.notes.append(note)
        failed = [c for c in result.checks if not c.passed]
        if failed:
            c = failed[0]
            raise VerificationFailed(
                f"{result.src}: {target.runtime} output differs from the PyTorch deploy model "
                f"at input {[c.batch, arch.in_channels, c.height, c.width]} (max rel diff "
                f"{c.metrics.max_rel:.3g} > {c.tolerance:.3g}); nothing was written")

    return check


def _check_stored_weights(result: ExportResult, target: Runtime, path: str, deploy_sd) -> None:
    """Every weight stored in the artifact against the deploy weights, where the runtime can
    read them back (Core ML)."""
    from ..check.artifact import check_weights

    read = target.read_weights(path, list(deploy_sd), result.dtype)
    if read is None:
        return
    stored, names = read
    result.weights = w = check_weights(stored, deploy_sd, names, result.dtype)
    if not w.passed:
        what = (f"missing {w.missing[0]}" if w.missing else
                f"wrong {w.wrong[0]}" if w.wrong else f"unexpected constant {w.unexpected[0]}")
        raise VerificationFailed(f"{result.src}: the {target.runtime} package does not hold "
                                 f"exactly the deploy weights ({what}); nothing was written")
