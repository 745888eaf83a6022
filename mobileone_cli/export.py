"""ONNX export of a deploy MobileOne, proven by running the written file in onnxruntime.

An exported graph is only as good as the runtime that executes it: after export the file is loaded
by onnxruntime and run on seeded images at every shape it claims to accept (two batch sizes and two
resolutions when those axes are dynamic), and its outputs are compared with our PyTorch deploy
model.  The file is written to a temporary name and renamed only after that check passes.

Two exporters exist in torch.  The ``dynamo`` one (``torch.onnx.export(dynamo=True)``, the default
since torch 2.9, needs onnxscript) writes opset >= 18; the TorchScript one is deprecated but still
present in torch 2.13 and can write older opsets.  ``auto`` takes dynamo when it is usable and the
requested opset allows it, else TorchScript.  Either way the onnxruntime check decides.

The reference is our float32 deploy model holding exactly the weights written to the file, run
on the same seeded images.  Half precision: weights, input and output are float16; the reference
holds the float16-rounded weights (upcast), and the total cost of float16 against the float32 deploy
model is reported alongside.  torch is imported inside the functions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import BadInput, VerificationFailed
from .io.source import LoadOptions
from .io.write import atomic_write, stale_note
from .spec.limits import MAX_BATCH, MAX_INPUT_SIDE as MAX_SIDE, check_batch, check_seed
from .spec.tolerances import EXPORT_RTOL

__all__ = ["ExportOptions", "ExportResult", "ShapeCheck", "export_file", "export_model", "check_onnx",
           "check_shapes", "require_onnx", "resolve_exporter",
           "EXPORT_RTOL", "EXPORTERS"]

EXPORTERS = ("auto", "dynamo", "torchscript")
DYNAMO_MIN_OPSET = 18


@dataclass
class ShapeCheck:
    """onnxruntime against PyTorch at one input shape."""

    batch: int
    height: int
    width: int
    metrics: Any  # verify.Metrics of onnxruntime against our float32 deploy model
    tolerance: float
    passed: bool
    metrics_fp32: Any = None  # fp16 only: against the float32 deploy model (total cost of fp16)


@dataclass
class ExportResult:
    src: str
    dst: str
    detection: Any  # detect.Detection
    fused: bool  # the input was train-form and was fused on the way
    fusion_metrics: Any  # train (eval) vs our deploy model, when fused and verified
    exporter: str
    opset: int
    dtype: str
    input_name: str
    output_name: str
    input_shape: List[Any]
    output_shape: List[Any]
    rtol: Optional[float]  # --rtol, when it replaced the adaptive tolerance
    checks: List[ShapeCheck] = field(default_factory=list)
    size_out: int = 0
    notes: List[str] = field(default_factory=list)


# ---------------------------------------------------------------- what is installed


def require_onnx() -> None:
    from .runtimes.onnx import require

    require()


def _dynamo_usable() -> bool:
    import inspect

    import torch

    try:
        has_flag = "dynamo" in inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):
        has_flag = False
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return has_flag


def _onnx_hint() -> str:
    from .runtimes.onnx import INSTALL_HINT

    return INSTALL_HINT


def resolve_exporter(exporter: str = "auto", opset: Optional[int] = None) -> str:
    """'dynamo' or 'torchscript' for the requested ``exporter`` and ``opset``."""
    if exporter not in EXPORTERS:
        raise BadInput(f"--exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    low_opset = opset is not None and opset < DYNAMO_MIN_OPSET
    if exporter == "dynamo":
        if not _dynamo_usable():
            raise BadInput("--exporter dynamo needs onnxscript (and torch >= 2.5), which is not "
                           "available", hint=_onnx_hint())
        if low_opset:
            raise BadInput(f"--opset {opset}: the dynamo exporter writes opset "
                           f">= {DYNAMO_MIN_OPSET}", hint="use --exporter torchscript for older "
                           "opsets, or leave --exporter at auto")
        return "dynamo"
    if exporter == "torchscript":
        return "torchscript"
    return "dynamo" if (_dynamo_usable() and not low_opset) else "torchscript"


# ---------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow the exporters' progress prints, warnings and log lines: the summary says it all,
    and a failure becomes one error line."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), \
                contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_model(model, path: str, *, sample, dynamic_batch: bool, dynamic_size: bool,
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
    with _quiet(), torch.no_grad():
        try:
            if exporter == "dynamo":
                dims = {ax: torch.export.Dim(name, min=1, max=MAX_BATCH if ax == 0 else MAX_SIDE)
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
            detail = str(exc).strip().splitlines()
            raise VerificationFailed(f"the {exporter} ONNX exporter failed: "
                                     f"{exc.__class__.__name__}: {detail[0][:200] if detail else ''}",
                                     hint="run with --exporter torchscript or dynamo to try the "
                                          "other exporter") from None


# ---------------------------------------------------------------- check


def check_shapes(batch: Optional[int], input_size: Tuple[int, int],
                 dynamic_size: bool) -> List[Tuple[int, int, int]]:
    """The (batch, H, W) shapes an export is checked at: two of each dynamic axis."""
    h, w = input_size
    batches = [1, 3] if batch is None else [batch]
    sizes = [(h, w), (h + 32, w + 64)] if dynamic_size else [(h, w)]
    return [(b, hh, ww) for b in batches for hh, ww in sizes]


def check_onnx(path: str, deploy_sd: Dict[str, Any], arch, shapes: Sequence[Tuple[int, int, int]],
               *, dtype: str = "fp32", seed: int = 0, rtol: Optional[float] = None
               ) -> List[ShapeCheck]:
    """Run ``path`` in onnxruntime (CPU) and our deploy model on the same seeded images.

    ``deploy_sd`` holds the deploy weights (Apple keys) before any fp16 rounding.  The reference
    is our float32 deploy model holding exactly the weights of the file (fp16: the rounded ones,
    upcast) on the same (fp16: rounded) input; for fp16 the comparison with the unrounded float32
    model, the total cost of half precision, is reported alongside.
    """
    import torch

    from .check.harness import compare_outputs, load_model, seeded_inputs
    from .runtimes import load_artifact

    tol = EXPORT_RTOL[dtype] if rtol is None else rtol
    artifact = load_artifact(path, kind="onnx")
    fp16 = dtype == "fp16"
    full = load_model(deploy_sd, arch, "deploy", dtype=torch.float32)
    ref_model = full
    if fp16:
        ref_model = load_model({k: v.to(torch.float16) for k, v in deploy_sd.items()}, arch,
                               "deploy", dtype=torch.float32)
    logits = arch.has_head
    results = []
    for i, (b, h, w) in enumerate(shapes):
        x = seeded_inputs(seed + i, b, (h, w), arch.in_channels, torch.float32)
        if fp16:
            x = x.half()
        got = artifact.run(x)
        with torch.no_grad():
            ref = ref_model(x.float())
            vs_fp32 = compare_outputs(full(x.float()), got, logits=logits) if fp16 else None
        if tuple(got.shape) != tuple(ref.shape):
            raise VerificationFailed(f"onnxruntime output shape {list(got.shape)} differs from "
                                     f"PyTorch's {list(ref.shape)} at input {[b, 3, h, w]}")
        m = compare_outputs(ref, got, logits=logits)
        results.append(ShapeCheck(batch=b, height=h, width=w, metrics=m, tolerance=tol,
                                  passed=m.within(tol), metrics_fp32=vs_fp32))
    return results


# ---------------------------------------------------------------- the whole job


def _check_destination(dst: str, force: bool, src: str) -> None:
    from .io.write import check_destination

    check_destination(dst, force=force, src=src, what="file path ending in .onnx")


def _validate_shape(input_size: Tuple[int, int], batch: Optional[int]) -> None:
    h, w = input_size
    if not (2 <= h <= MAX_SIDE and 2 <= w <= MAX_SIDE):
        raise BadInput(f"--input-size {h} {w}: each side must be between 2 and {MAX_SIDE}")
    if batch is not None:
        check_batch(batch, (h, w))
    else:  # a dynamic batch is checked at 3 images
        check_batch(3, (h + 32, w + 64), option="--input-size (checked at batch 3)")


@dataclass
class ExportOptions(LoadOptions):
    """How ``export`` writes and checks a graph (the reading options come from LoadOptions)."""

    input_size: Tuple[int, int] = (224, 224)
    batch: Optional[int] = None  # None: a dynamic batch axis
    dynamic_size: bool = True
    opset: Optional[int] = None
    dtype: str = "fp32"
    exporter: str = "auto"
    force: bool = False
    verify: bool = True  # check the fusion against the train model (train-form input)
    seed: int = 0
    rtol: Optional[float] = None


def export_file(src: str, dst: str, options: Optional[ExportOptions] = None,
                **overrides: Any) -> ExportResult:
    """Load ``src`` (any layout, train or deploy form), fuse if needed, export, check, write.

    ``options`` (or keyword overrides of its fields) say how; ``batch=None`` makes the batch axis
    dynamic, ``dynamic_size`` the height and width axes.  Loading, fusion and the train-vs-deploy
    check are :func:`convert.convert_file`'s.  Nothing is written unless every check passes.
    """
    o = dataclasses.replace(options or ExportOptions(), **overrides)
    src, dst = os.fspath(src), os.fspath(dst)
    if o.dtype not in EXPORT_RTOL:
        raise BadInput(f"--dtype {o.dtype!r}: ONNX export supports {', '.join(EXPORT_RTOL)}")
    input_size = tuple(o.input_size)
    _validate_shape(input_size, o.batch)
    _check_destination(dst, o.force, src)
    require_onnx()
    chosen = resolve_exporter(o.exporter, o.opset)

    import torch

    from .check.harness import check_room, load_model
    from .convert import ConvertOptions, convert_file
    from .spec.layouts import schema

    check_seed(o.seed)
    load = {f.name: getattr(o, f.name) for f in dataclasses.fields(LoadOptions)}
    conv = convert_file(src, None, ConvertOptions(**load, layout_out="apple", fuse=True,
                                                  verify=o.verify, seed=o.seed,
                                                  input_size=input_size))
    det = conv.detection
    shapes = check_shapes(o.batch, input_size, o.dynamic_size)
    check_room(det.arch, max(s[1:] for s in shapes), max(s[0] for s in shapes),
               "the onnxruntime check")
    out = conv.state_dict or {}
    deploy_sd = {e.key: out[det.prefix + e.key] for e in schema(det.arch, "apple", "deploy")}
    conv.state_dict = None
    export_net = load_model(deploy_sd, det.arch, "deploy", dtype=torch.float32)
    if o.dtype == "fp16":
        bad = [k for k, v in deploy_sd.items()
               if not bool(torch.isfinite(v.to(torch.float16)).all())]
        if bad:
            raise VerificationFailed(f"{src}: {bad[0]} does not fit in float16 (values beyond "
                                     f"+-65504); export in fp32")
        export_net = export_net.half()
    torch_dtype = torch.float16 if o.dtype == "fp16" else torch.float32
    # Trace on batch 2 when the batch is dynamic: size-1 axes get specialised by torch.export.
    sample = torch.zeros(o.batch or 2, det.arch.in_channels, *input_size, dtype=torch_dtype)
    output_name = "logits" if det.arch.has_head else "features"
    notes = list(conv.notes)
    found: Dict[str, Any] = {}

    def write(tmp: str) -> None:
        exporter = chosen
        try:
            export_model(export_net, tmp, sample=sample, dynamic_batch=o.batch is None,
                         dynamic_size=o.dynamic_size, opset=o.opset, exporter=exporter,
                         output_name=output_name)
        except VerificationFailed as exc:
            if o.exporter != "auto" or exporter != "dynamo":
                raise
            notes.append(f"dynamo exporter failed ({exc.message}); used the TorchScript one")
            exporter = "torchscript"
            export_model(export_net, tmp, sample=sample, dynamic_batch=o.batch is None,
                         dynamic_size=o.dynamic_size, opset=o.opset, exporter=exporter,
                         output_name=output_name)
        found["exporter"] = exporter

    def check(tmp: str) -> None:
        from .runtimes.onnx import graph_io

        got_opset, in_name, out_name, in_shape, out_shape, _ = graph_io(tmp)
        if o.opset is not None and got_opset != o.opset:
            raise BadInput(f"--opset {o.opset}: the {found['exporter']} exporter wrote opset "
                           f"{got_opset}")
        checks = check_onnx(tmp, deploy_sd, det.arch, shapes, dtype=o.dtype,
                            seed=o.seed, rtol=o.rtol)
        found["result"] = ExportResult(
            src=src, dst=dst, detection=det, fused=det.form == "train",
            fusion_metrics=conv.metrics, exporter=found["exporter"], opset=got_opset,
            dtype=o.dtype, input_name=in_name, output_name=out_name, input_shape=in_shape,
            output_shape=out_shape, rtol=o.rtol, checks=checks, notes=notes)
        failed = [c for c in checks if not c.passed]
        if failed:
            c = failed[0]
            raise VerificationFailed(
                f"{src}: onnxruntime output differs from the PyTorch deploy model at input "
                f"{[c.batch, det.arch.in_channels, c.height, c.width]} (max rel diff "
                f"{c.metrics.max_rel:.3g} > {c.tolerance:.3g}); nothing was written")

    size = atomic_write(dst, write, force=o.force, check=check)
    result = found["result"]
    result.size_out = size
    result.notes += filter(None, [stale_note(dst)])
    return result
