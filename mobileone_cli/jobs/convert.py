"""``convert``: open, fuse, remap, check, write.  The command line is a thin shell on it."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .. import __version__
from ..arch.layouts import get_layout, param_count, schema
from ..errors import BadInput, MobileOneError, VerificationFailed
from ..io.detect import Detection
from ..io.leftovers import stale_note
from ..io.source import LoadOptions, open_source
from ..io.write import check_checkpoint_name, check_destination, output_format, save_checkpoint
from ..rules.dtypes import STORAGE_DTYPES
from ..rules.limits import DEFAULT_EPS, check_seed
from ..timing import Steps

__all__ = ["ConvertOptions", "ConvertResult", "convert_file", "convert_state_dict", "DTYPES"]

DTYPES = STORAGE_DTYPES  # --dtype name -> dtype


@dataclass
class ConvertOptions(LoadOptions):
    """What ``convert`` does with an input (the reading options come from LoadOptions)."""

    layout_out: Optional[str] = None  # default: the input's layout
    fuse: bool = True
    dtype: Optional[str] = None  # 'fp32', 'fp16', 'bf16' (or the torch names); None: the source's
    verify: bool = True
    rtol: Optional[float] = None  # None: the shared rule's tolerance (rules/tolerances.py)
    seed: int = 0
    input_size: Tuple[int, int] = (224, 224)
    force: bool = False
    equalize: bool = False  # cross-layer equalization of the fused weights (fuse.equalize)


@dataclass
class ConvertResult:
    src: str
    dst: Optional[str]
    detection: Detection
    layout_out: str
    form_out: str
    keys_in: int
    keys_out: int
    params_in: int
    params_out: int
    eps: float = DEFAULT_EPS
    size_in: int = 0
    size_out: int = 0
    verdict: Any = None  # check.verdict.Verdict, when checked
    passthrough: int = 0  # keys outside the MobileOne copied unchanged
    notes: List[str] = field(default_factory=list)
    state_dict: Optional[Dict[str, Any]] = None  # the output, for API users
    dtype_out: Optional[str] = None  # --dtype, as a torch dtype name
    rounding: Any = None  # Metrics: the rounded model against the unrounded one (--dtype)
    health: Optional[Dict[str, Any]] = None  # check.health report of SRC (its cheap parts)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step (-v, --json)
    equalization: Any = None  # fuse.equalize.Equalization with --equalize

    @property
    def metrics(self):
        """Deploy against train at the output (fp32 comparison), when checked."""
        return self.verdict.fp32.output if self.verdict is not None else None


def parse_dtype(name: Optional[str]):
    """'fp16' / 'bf16' / 'fp32' (or the torch names) -> torch dtype; None stays None."""
    if name is None:
        return None
    import torch

    text = str(name).lower().replace("torch.", "")
    key = DTYPES.get(text, text)
    if key not in DTYPES.values():
        raise BadInput(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, key)


def convert_state_dict(sd: Dict[str, Any], det: Detection, *, layout_out: Optional[str] = None,
                       fuse: bool = True, eps: float = DEFAULT_EPS, dtype=None,
                       consume: bool = False, equalize: bool = False) -> Dict[str, Any]:
    """The converted state dict: MobileOne keys fused/remapped in place of the old ones, every
    other key copied through in its original position (``equalize``: the fused weights
    equalized across layers, :mod:`..fuse.equalize`)."""
    return _converted(sd, det, layout_out=layout_out, fuse=fuse, eps=eps, dtype=dtype,
                      consume=consume, equalize=equalize)[0]


def _equalized(mob: Dict[str, Any], det: Detection, eps: float, dtype, consume: bool):
    """Fused in float64, equalized in float64 (fuse.equalize), rounded once to ``dtype`` (default:
    the source's); Apple names."""
    import torch

    from ..arch.layouts import remap
    from ..fuse.equalize import equalize_state_dict
    from ..fuse.fusion import fuse_state_dict

    target = dtype or next(v.dtype for v in mob.values() if v.is_floating_point())
    fused = fuse_state_dict(mob, det.arch, eps=eps, dtype=torch.float64, layout=det.layout,
                            consume=consume)
    apple = remap(fused, det.arch, det.layout, "apple", "deploy")
    return equalize_state_dict(apple, det.arch, dtype=target)


def _converted(sd: Dict[str, Any], det: Detection, *, layout_out: Optional[str], fuse: bool,
               eps: float, dtype, consume: bool, equalize: bool):
    """(the converted state dict, the fuse.equalize.Equalization or None)."""
    from ..arch.layouts import remap
    from ..fuse.fusion import fuse_state_dict

    layout_out = layout_out or det.layout
    if equalize and not (fuse and det.form == "train"):
        raise BadInput("--equalize equalizes the fusion of a train checkpoint (it is checked "
                       "against the train model)", hint="give the train (unfused) checkpoint, "
                                                        "without --no-fuse")
    pfx = det.prefix
    ours = {e.key for e in det.entries()}
    first_ours = next(k for k in sd if k.startswith(pfx) and k[len(pfx):] in ours)
    order = list(sd)
    mob = {k[len(pfx):]: sd[k] for k in order if k.startswith(pfx) and k[len(pfx):] in ours}
    if consume:
        for k in list(sd):
            if k.startswith(pfx) and k[len(pfx):] in ours:
                del sd[k]
    form, eq, layout_in = det.form, None, det.layout
    if equalize:
        mob, eq = _equalized(mob, det, eps, dtype, consume)
        form, layout_in = "deploy", "apple"
    elif fuse and form == "train":
        mob = fuse_state_dict(mob, det.arch, eps=eps, dtype=dtype, layout=det.layout,
                              consume=consume)
        form = "deploy"
    elif dtype is not None:
        mob = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in mob.items()}
    mob = remap(mob, det.arch, layout_in, layout_out, form)
    out: Dict[str, Any] = {}
    for k in order:
        if k == first_ours:
            out.update((pfx + mk, mv) for mk, mv in mob.items())
        elif not (k.startswith(pfx) and k[len(pfx):] in ours):
            out[k] = sd[k] if not consume else sd.pop(k)
    return out, eq


def _container(layout: str, det: Detection, form: str, extras: Dict[str, Any],
               src: str) -> Optional[dict]:
    """mmpretrain loaders expect {'meta', 'state_dict'}; Apple and timm files are bare dicts."""
    if layout != "mmpretrain":
        return None
    from ..io.meta import plain_data

    # Placeholders (foreign objects never loaded) become strings: the output stays weights-only.
    meta = plain_data(extras["meta"], where=src) if isinstance(extras.get("meta"), dict) \
        else {}
    meta.update({"mobileone_cli": __version__, "arch": det.arch.name, "form": form})
    return {"meta": meta}


def _check(result: ConvertResult, train_sd: Dict[str, Any], deploy_sd: Dict[str, Any],
           options: ConvertOptions) -> None:
    """The shared verdict (check.verdict.judge) on one seeded image; refuse to write on FAIL."""
    from ..check.harness import check_room, seeded_inputs
    from ..check.verdict import judge, non_finite

    det = result.detection
    check_room(det.arch, options.input_size, 1, "the check")
    x = seeded_inputs(options.seed, 1, options.input_size, det.arch.in_channels)
    train_layout = det.layout
    if result.equalization is not None:  # the train model reparameterized alike, in float64
        from ..arch.layouts import remap
        from ..fuse.equalize import equalize_train_state_dict

        train_sd = equalize_train_state_dict(remap(train_sd, det.arch, det.layout, "apple",
                                                   "train"), det.arch, result.equalization)
        train_layout = "apple"
    result.verdict = judge(train_sd, deploy_sd, det.arch, x, train_layout=train_layout,
                           deploy_layout=result.layout_out, bn_eps=result.eps, rtol=options.rtol)
    non_finite(result.verdict, result.src, fused_here=True)
    if not result.verdict.passed:
        exc = VerificationFailed(f"{result.src}: {result.verdict.summary()}; nothing was written")
        exc.facts["max_rel"] = result.verdict.decisive.output.max_rel
        raise exc


def _rounding(result: ConvertResult, sd: Dict[str, Any], out: Dict[str, Any],
              options: ConvertOptions):
    """--dtype: what rounding to the output dtype costs, against the unrounded conversion."""
    import torch

    from ..check.harness import compare_outputs, load_model, seeded_inputs

    det = result.detection
    ref_sd = convert_state_dict(sd, det, layout_out=result.layout_out, fuse=options.fuse,
                                eps=result.eps, equalize=options.equalize)
    keys = [e.key for e in schema(det.arch, result.layout_out, result.form_out)]
    x = seeded_inputs(options.seed, 1, options.input_size, det.arch.in_channels)
    with torch.no_grad():
        outs = [load_model({k: s[det.prefix + k] for k in keys}, det.arch, result.form_out,
                           layout=result.layout_out, bn_eps=result.eps,
                           dtype=torch.float32)(x) for s in (ref_sd, out)]
    return compare_outputs(outs[0], outs[1], logits=det.arch.has_head)


def source_health(source) -> Dict[str, Any]:
    """The cheap parts of ``inspect``'s health report (check.health.CHEAP_PARTS) of an opened
    source: BatchNorm tensors, dtypes, NaN/Inf outside the MobileOne (open_source has refused
    NaN/Inf inside it, and negative variances).  No pass over every value, no second fusion."""
    from ..check.health import CHEAP_PARTS, checkpoint_health
    from ..io.arrays import ArrayView

    # open_source keys the state dict by the layout's full names (an implied root included)
    det = dataclasses.replace(source.detection, implied_root="")
    ours = {det.prefix + e.key for e in det.entries()}
    return checkpoint_health(ArrayView(source.state_dict), source.tensors, det,
                             parts=CHEAP_PARTS,
                             scan_keys=[k for k in source.state_dict if k not in ours])


def convert_file(src: str, dst: Optional[str], options: Optional[ConvertOptions] = None,
                 **overrides: Any) -> ConvertResult:
    """Convert one checkpoint file; with ``dst=None`` nothing is written (dry run).

    ``options`` (or keyword overrides of its fields, e.g. ``layout_out="timm", force=True``) say
    how.  Nothing is written unless the check passes (exit 1 otherwise).
    """
    options = dataclasses.replace(options or ConvertOptions(), **overrides)
    src = os.fspath(src)
    dtype = parse_dtype(options.dtype)
    check_seed(options.seed)
    if dst is not None:
        dst = os.fspath(dst)
        check_destination(dst, force=options.force, src=src)
        check_checkpoint_name(dst)
    layout_out = None
    if options.layout_out is not None:
        try:
            layout_out = get_layout(options.layout_out).name
        except KeyError as exc:
            raise BadInput(str(exc.args[0])) from None
    steps = Steps()
    source = open_source(src, options, steps=steps)
    try:
        return _convert(src, dst, source, options, dtype, layout_out, steps)
    except MobileOneError as exc:  # a batch row keeps what was learned before the failure
        det = source.detection
        exc.facts.setdefault("arch", det.arch.name)
        exc.facts.setdefault("layout", det.layout)
        raise


def _convert(src: str, dst: Optional[str], source: Any, options: ConvertOptions, dtype: Any,
             layout_out: Optional[str], steps: Steps) -> ConvertResult:
    det, sd = source.detection, source.state_dict
    layout_out = layout_out or det.layout
    fusing = options.fuse and det.form == "train"
    form_out = "deploy" if fusing else det.form
    notes = []
    if det.form == "deploy":
        notes.append("input is already deploy-form: remapped without re-fusing")
    elif not options.fuse:
        notes.append("--no-fuse: train form remapped without fusing")
    notes += source.notes
    with steps("health"):
        health = source_health(source)
    keep_train = options.verify and fusing
    # --dtype changes the precision: measure what that costs (unless nothing is to be checked).
    rounds = (options.verify and dtype is not None
              and str(dtype).replace("torch.", "") != det.dtype)
    with steps(("equalize" if options.equalize else "fuse") if fusing else "remap"):
        out, equalization = _converted(sd, det, layout_out=layout_out, fuse=options.fuse,
                                       eps=source.eps, dtype=dtype,
                                       consume=not (keep_train or rounds),
                                       equalize=options.equalize)
        from ..io.sanity import check_fused_finite

        mob_out = [det.prefix + e.key for e in schema(det.arch, layout_out, form_out)]
        check_fused_finite(out, mob_out, src)
    entries_in = det.entries()
    result = ConvertResult(
        src=src, dst=dst, detection=det, layout_out=layout_out, form_out=form_out,
        keys_in=len(entries_in) + len(det.extra_keys), keys_out=len(out),
        params_in=param_count(entries_in),
        params_out=param_count(schema(det.arch, layout_out, form_out)), eps=source.eps,
        size_in=os.path.getsize(src), passthrough=len(det.extra_keys), notes=notes,
        dtype_out=str(dtype).replace("torch.", "") if dtype is not None else None,
        health=health, timings=steps.seconds, equalization=equalization)
    if rounds:
        with steps("rounding"):
            result.rounding = _rounding(result, sd, out, options)
    if keep_train:
        train_sd = {e.key: sd[det.prefix + e.key] for e in entries_in}
        dep = {e.key: out[det.prefix + e.key] for e in schema(det.arch, layout_out, "deploy")}
        with steps("check"):
            _check(result, train_sd, dep, options)
    if det.implied_root:
        root = det.implied_root
        out = {(k[len(root):] if k.startswith(root) else k): v for k, v in out.items()}
    if dst is not None:
        meta = {"format": "pt", "mobileone_cli": __version__, "arch": det.arch.name,
                "layout": layout_out, "form": form_out, "num_classes": str(det.arch.num_classes),
                "bn_eps": repr(source.eps)}
        with steps("write"):
            result.size_out = save_checkpoint(
                dst, out, force=options.force,
                container=_container(layout_out, det, form_out, source.checkpoint.extras, src),
                metadata=meta if output_format(dst) == "safetensors" else None)
        result.notes += filter(None, [stale_note(dst)])
    result.state_dict = out
    return result
