"""``convert``: load, detect, fuse, remap, check, write.  The command line is a thin shell on it."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import __version__
from .arch import ArchSpec
from .checkpoint import check_destination, load_checkpoint, output_format, save_checkpoint
from .detect import Detection, detect_layout, tensor_info
from .errors import BadInput, VerificationFailed
from .fusion import DEFAULT_EPS
from .layouts import get_layout, param_count, schema
from .sanity import check_bn_eps, check_fused_finite, preflight

__all__ = ["ConvertResult", "convert_file", "convert_state_dict", "check_finite"]


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
    size_in: int = 0
    size_out: int = 0
    metrics: Any = None  # verify.Metrics, when checked
    passthrough: int = 0  # keys outside the MobileOne copied unchanged
    notes: List[str] = field(default_factory=list)
    state_dict: Optional[Dict[str, Any]] = None  # the output, for API users
    dtype_out: Optional[str] = None  # --dtype, as a torch dtype name
    rounding: Any = None  # precision.Rounding: what --dtype's rounding costs, when checked


def check_finite(state_dict: Dict[str, Any], keys, where: str) -> None:
    """Refuse NaN/Inf anywhere in the MobileOne's tensors (a diverged run)."""
    import torch

    from .sanity import non_finite_keys

    for k in non_finite_keys(state_dict, keys)[:1]:
        bad = int((~torch.isfinite(state_dict[k])).sum())
        raise BadInput(f"{where}: {k} holds {bad} NaN/Inf value(s); the checkpoint is not usable",
                       hint="a diverged training run? pick an earlier checkpoint")


def convert_state_dict(sd: Dict[str, Any], det: Detection, *, layout_out: Optional[str] = None,
                       fuse: bool = True, eps: float = DEFAULT_EPS, dtype=None,
                       consume: bool = False) -> Dict[str, Any]:
    """The converted state dict: MobileOne keys fused/remapped in place of the old ones, every
    other key copied through in its original position."""
    from .fusion import fuse_state_dict
    from .layouts import remap

    layout_out = layout_out or det.layout
    pfx = det.prefix
    ours = {e.key for e in det.entries()}
    first_ours = next(k for k in sd if k.startswith(pfx) and k[len(pfx):] in ours)
    order = list(sd)
    mob = {k[len(pfx):]: sd[k] for k in order if k.startswith(pfx) and k[len(pfx):] in ours}
    if consume:
        for k in list(sd):
            if k.startswith(pfx) and k[len(pfx):] in ours:
                del sd[k]
    form = det.form
    if fuse and form == "train":
        mob = fuse_state_dict(mob, det.arch, eps=eps, dtype=dtype, layout=det.layout,
                              consume=consume)
        form = "deploy"
    elif dtype is not None:
        mob = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in mob.items()}
    mob = remap(mob, det.arch, det.layout, layout_out, form)
    out: Dict[str, Any] = {}
    for k in order:
        if k == first_ours:
            out.update((pfx + mk, mv) for mk, mv in mob.items())
        elif not (k.startswith(pfx) and k[len(pfx):] in ours):
            out[k] = sd[k] if not consume else sd.pop(k)
    return out


def _source_dtype(sd: Dict[str, Any], det: Detection):
    """The float dtype of the MobileOne's tensors (unified by preflight)."""
    return next(sd[det.prefix + e.key].dtype for e in det.entries() if e.kind == "param")


def _check_rounding(result: ConvertResult, sd: Dict[str, Any], out: Dict[str, Any], *, eps: float,
                    fuse: bool, with_train: bool, seed: int, input_size) -> None:
    """--dtype: run the same conversion unrounded, check it (strictly, when fused: below), and
    measure what rounding to the output dtype costs against it and against the train model."""
    from .precision import rounding_check

    det, layout_out, form_out = result.detection, result.layout_out, result.form_out
    ref_out = convert_state_dict(sd, det, layout_out=layout_out, fuse=fuse, eps=eps)
    mob = [e.key for e in schema(det.arch, layout_out, form_out)]
    train_sd = {e.key: sd[det.prefix + e.key] for e in det.entries()} if with_train else None
    result.metrics, result.rounding = rounding_check(
        {k: ref_out[det.prefix + k] for k in mob}, {k: out[det.prefix + k] for k in mob},
        det.arch, form=form_out, layout=layout_out, train_sd=train_sd, train_layout=det.layout,
        bn_eps=eps, seed=seed, input_size=input_size)
    if math.isfinite(result.rounding.vs_fp32.scale) and not result.rounding.vs_fp32.finite:
        raise VerificationFailed(f"{result.src}: the {result.rounding.dtype} model outputs NaN/Inf "
                                 f"on the check images (activations overflow?); nothing was "
                                 f"written", hint="keep the source dtype, or try --dtype bf16")


_HALF = ("torch.float16", "torch.bfloat16")


def _check_half_source(result: ConvertResult, sd: Dict[str, Any], *, eps: float, seed: int,
                       input_size):
    """Metrics of a half-precision source's fusion, taken in float32 on both sides.

    Half-precision arithmetic on both models would differ by its own rounding (~1e-3) and fail
    an honest fusion; the float32 fusion against the float32 train model is exact to ~1e-6.  The
    output keeps the source dtype (fused in float64, rounded once).
    """
    import torch

    from .verify import check_equivalence

    det, layout_out = result.detection, result.layout_out
    fused = convert_state_dict(sd, det, layout_out=layout_out, eps=eps, dtype=torch.float32)
    train = {e.key: sd[det.prefix + e.key].float() if sd[det.prefix + e.key].is_floating_point()
             else sd[det.prefix + e.key] for e in det.entries()}
    dep = {e.key: fused[det.prefix + e.key] for e in schema(det.arch, layout_out, "deploy")}
    kept = (f"DST is {result.dtype_out}" if result.dtype_out else "DST keeps the source dtype")
    result.notes.append(f"{str(_source_dtype(sd, det)).replace('torch.', '')} source: the fusion "
                        f"is checked in float32; {kept} (rounded once from float64)")
    return check_equivalence(train, dep, det.arch, layout=det.layout, deploy_layout=layout_out,
                             bn_eps=eps, seed=seed, input_size=input_size)


def _container(layout: str, det: Detection, form: str, extras: Dict[str, Any]) -> Optional[dict]:
    """mmpretrain loaders expect {'meta', 'state_dict'}; Apple and timm files are bare dicts."""
    if layout != "mmpretrain":
        return None
    from .safeload import plain_data

    # Placeholders (foreign objects never loaded) become strings: the output stays weights-only.
    meta = plain_data(dict(extras["meta"])) if isinstance(extras.get("meta"), dict) else {}
    meta.update({"mobileone_cli": __version__, "arch": det.arch.name, "form": form})
    return {"meta": meta}


def _loading_notes(ck, det: Detection, layout_out: str) -> List[str]:
    """What the user should know about how the file was read (placeholders, trust, root)."""
    notes = []
    if ck.stubbed:
        names = ", ".join(ck.stubbed[:4]) + (f" and {len(ck.stubbed) - 4} more"
                                             if len(ck.stubbed) > 4 else "")
        notes.append(f"loaded without running code: {len(ck.stubbed)} foreign global(s) read as "
                     f"inert placeholders ({names})")
    if ck.trusted:
        notes.append("--trust-file: the file was unpickled with weights_only=False")
    if det.implied_root:
        keep = "kept without it" if layout_out == "mmpretrain" else "not needed"
        notes.append(f"mmpretrain backbone saved without its {det.implied_root!r} root ({keep} "
                     f"in the output)")
    return notes


def convert_file(src: str, dst: Optional[str], *, arch: Optional[ArchSpec] = None,
                 layout_out: Optional[str] = None, fuse: bool = True, eps: float = DEFAULT_EPS,
                 force: bool = False, verify: bool = True, prefix: Optional[str] = None,
                 ema: bool = False, trust: bool = False, dtype=None,
                 rtol: Optional[float] = None,
                 seed: int = 0, input_size=(224, 224),
                 arch_source: Optional[str] = None) -> ConvertResult:
    """Convert one checkpoint file; with ``dst=None`` nothing is written (dry run).

    ``arch_source`` says where ``arch`` came from ('--config FILE'); a config also fixes the head.
    """
    eps = check_bn_eps(eps)
    if dst is not None:
        check_destination(dst, force=force, src=src)
        get_layout(layout_out or "apple")
    ck = load_checkpoint(src, ema=ema, trust=trust)
    sd = ck.state_dict
    det = detect_layout(tensor_info(sd), prefix=prefix, where=src)
    if det.implied_root:  # an mmpretrain backbone saved alone: work on the layout's full names
        sd = {det.implied_root + k: v for k, v in sd.items()}
    if arch is not None:
        from .config import expect_arch

        det.arch = expect_arch(arch, det.arch, det.form, where=src,
                               source=arch_source or "--arch",
                               compare_head=arch_source is not None)
    layout_out = layout_out or det.layout
    ours = [det.prefix + e.key for e in det.entries()]
    check_finite(sd, ours, src)
    entries_in = det.entries()
    fusing = fuse and det.form == "train"
    form_out = "deploy" if fusing else det.form
    notes = []
    if det.form == "deploy":
        notes.append("input is already deploy-form: remapped without re-fusing")
    elif not fuse:
        notes.append("--no-fuse: train form remapped without fusing")
    if ck.stripped_prefix:
        notes.append(f"stripped key prefix {ck.stripped_prefix!r}")
    if ck.wrapper:
        notes.append(f"state dict taken from the {ck.wrapper!r} entry")
    notes += _loading_notes(ck, det, layout_out)
    notes += preflight(sd, det, eps, src)  # mixed dtypes, variances, NaN outside the MobileOne

    keep_train = verify and fusing
    rounding = (verify and str(dtype) in ("torch.float16", "torch.bfloat16")
                and dtype != _source_dtype(sd, det))  # --dtype rounds: measure what it costs
    out = convert_state_dict(sd, det, layout_out=layout_out, fuse=fuse, eps=eps, dtype=dtype,
                             consume=not (keep_train or rounding))
    check_fused_finite(out, [det.prefix + e.key for e in schema(det.arch, layout_out, form_out)],
                       src)
    result = ConvertResult(
        src=src, dst=dst, detection=det, layout_out=layout_out, form_out=form_out,
        keys_in=len(entries_in) + len(det.extra_keys), keys_out=len(out),
        params_in=param_count(entries_in),
        params_out=param_count(schema(det.arch, layout_out, form_out)),
        size_in=os.path.getsize(src), passthrough=len(det.extra_keys), notes=notes)
    if dtype is not None:
        from .precision import dtype_name

        result.dtype_out = dtype_name(dtype)
    if rounding:
        _check_rounding(result, sd, out, eps=eps, fuse=fuse, with_train=keep_train, seed=seed,
                        input_size=input_size)

    if keep_train:
        from .verify import DEFAULT_RTOL, check_equivalence

        train_sd = {e.key: sd[det.prefix + e.key] for e in det.entries()}
        dep = {e.key: out[det.prefix + e.key] for e in schema(det.arch, layout_out, "deploy")}
        if result.metrics is None and str(_source_dtype(sd, det)) in _HALF:
            result.metrics = _check_half_source(result, sd, eps=eps, seed=seed,
                                                input_size=input_size)
        if result.metrics is None:
            result.metrics = check_equivalence(train_sd, dep, det.arch, layout=det.layout,
                                               deploy_layout=layout_out, bn_eps=eps, seed=seed,
                                               input_size=input_size)
        if not math.isfinite(result.metrics.scale):
            raise BadInput(f"{src}: the train model itself outputs NaN/Inf on the check images "
                           f"(weights too large?); nothing was written",
                           hint="a diverged training run or a corrupt file?")
        tol = DEFAULT_RTOL if rtol is None else rtol
        if not result.metrics.within(tol):
            raise VerificationFailed(
                f"{src}: fused model differs from the train model (max rel diff "
                f"{result.metrics.max_rel:.3g} > {tol:g}); nothing was written")
    if det.implied_root:
        root = det.implied_root
        out = {(k[len(root):] if k.startswith(root) else k): v for k, v in out.items()}
    if dst is not None:
        meta = {"format": "pt", "mobileone_cli": __version__, "arch": det.arch.name,
                "layout": layout_out, "form": form_out, "num_classes": str(det.arch.num_classes),
                "bn_eps": repr(eps)}
        result.size_out = save_checkpoint(
            dst, out, force=force, container=_container(layout_out, det, form_out, ck.extras),
            metadata=meta if output_format(dst) == "safetensors" else None)
    result.state_dict = out
    return result
