"""The health of a checkpoint's numbers, as plain data: faults, warnings and the facts behind them.

Faults make a file unusable as it stands (NaN/Inf, negative BatchNorm variances); warnings are
facts that silently change a result (the training eps deciding the fused weights, dead channels
and branches, values a half-precision format cannot hold, mixed dtypes).  Value statistics run on
numpy arrays (``io.arrays``), so a ``.safetensors`` file is examined without torch; only the eps
sensitivity of a train-form MobileOne needs torch, because it is measured with the tool's one
fusion (``fuse.fusion.fuse_block``) at the two eps values of ``rules.tolerances.EPS_PROBE``.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..arch.layouts import get_layout
from ..io.detect import Detection, TensorInfo
from ..rules.dtypes import FLOAT_DTYPES
from ..rules.tolerances import EPS_PROBE, EPS_SENSITIVITY_WARN, FLUSH_WARN_SHARE, FORMAT_RANGE

__all__ = ["checkpoint_health", "eps_sensitivity", "block_name", "PARTS", "CHEAP_PARTS"]

PARTS = ("finite", "variance", "dead", "eps", "headroom", "dtypes")
# What convert adds to its summary: BatchNorm tensors and dtypes only, no pass over every value.
CHEAP_PARTS = ("finite", "variance", "dead", "dtypes")
WORST_SHOWN = 3


def _few(items: Sequence[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _is_float(a: Any) -> bool:
    return a is not None and a.dtype.kind == "f"


def _finite(values: Mapping[str, Any], keys: Iterable[str]) -> List[Dict[str, Any]]:
    import numpy as np

    bad = []
    for k in keys:
        a: Any = values.get(k)
        if not _is_float(a) or np.isfinite(a).all():
            continue
        bad.append({"key": k, "nan": int(np.isnan(a).sum()), "inf": int(np.isinf(a).sum())})
    return bad


def _batchnorms(values: Mapping[str, Any]) -> List[str]:
    """Module prefixes ('stage1.0.rbr_skip.') of every BatchNorm: a running_var beside it."""
    return [k[: -len("running_var")] for k in values
            if k.endswith("running_var") and (k == "running_var" or k.endswith(".running_var"))
            and _is_float(values[k])]


def _variance(values: Mapping[str, Any], bns: List[str]) -> Dict[str, Any]:
    import numpy as np

    out: Dict[str, Any] = {"batchnorms": len(bns), "min": None, "min_key": None,
                           "negative": [], "zero": []}
    for p in bns:
        var = values[p + "running_var"]
        if not var.size:
            continue
        m = float(np.nanmin(var)) if not np.isnan(var).all() else None
        if m is not None and (out["min"] is None or m < out["min"]):
            out["min"], out["min_key"] = m, p + "running_var"
        neg = int((var < 0).sum())
        if neg:
            out["negative"].append({"key": p + "running_var", "count": neg, "min": m})
        zero = int((var == 0).sum())
        if zero:
            out["zero"].append({"key": p + "running_var", "count": zero})
    return out


def block_name(det: Detection, block: Any) -> str:
    """A block as the file names it ('stages.1.4' in timm's layout, 'stage2.4' in Apple's)."""
    return det.full_key(get_layout(det.layout).block_path(block))


def _block_branches(det: Detection) -> List[Tuple[str, List[str]]]:
    """(block name, file prefixes of its BatchNorms) of a train-form MobileOne."""
    lay = get_layout(det.layout)
    out = []
    for b in det.arch.block_specs():
        path = lay.block_path(b)
        parts = [lay.part("conv_bn", n) for n in range(b.conv_branches)]
        parts += [lay.part("scale_bn")] if b.has_scale else []
        parts += [lay.part("skip")] if b.has_identity else []
        out.append((block_name(det, b), [det.full_key(f"{path}.{p}.") for p in parts]))
    return out


def _dead(values: Mapping[str, Any], bns: List[str], det: Optional[Detection]) -> Dict[str, Any]:
    """BatchNorms whose gamma is 0 everywhere (dead branches) or in some channels; block output
    channels that are constant (every branch's gamma 0, or an all-zero fused kernel)."""
    import numpy as np

    branches, channels, blocks = [], [], []
    for p in bns:
        g: Any = values.get(p + "weight")
        if not _is_float(g) or not g.size:
            continue
        n = int((g == 0).sum())
        if n == g.size:
            branches.append(p.rstrip("."))
        elif n:
            channels.append({"key": p + "weight", "count": n, "of": int(g.size)})
    if det is not None and det.form == "train":
        for name, prefixes in _block_branches(det):
            gammas: List[Any] = [values.get(p + "weight") for p in prefixes]
            if gammas and all(_is_float(g) and g.shape == gammas[0].shape for g in gammas):
                n = int(np.logical_and.reduce([g == 0 for g in gammas]).sum())
                if n:
                    blocks.append({"block": name, "channels": n})
    elif det is not None:
        lay = get_layout(det.layout)
        for b in det.arch.block_specs():
            w: Any = values.get(det.full_key(f"{lay.block_path(b)}.{lay.part('reparam')}.weight"))
            if _is_float(w) and w.size:
                n = int((~np.any(w.reshape(w.shape[0], -1) != 0, axis=1)).sum())
                if n:
                    blocks.append({"block": block_name(det, b), "channels": n})
    return {"branches": branches, "channels": channels, "blocks": blocks}


def _headroom(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Per half-precision format: largest |value| against its range, the values that would
    become inf there, and the shares of the nonzero finite values that would become subnormal
    (or zero) and zero.  Thresholds follow round-to-nearest-even (rules.tolerances)."""
    import numpy as np

    acc: Dict[str, Dict[str, Any]] = {
        f: {"max_abs": 0.0, "max_key": None, "overflow": 0, "overflow_keys": [], "subnormal": 0,
            "zero": 0, "zero_keys": []} for f in FORMAT_RANGE}
    nonzero = 0
    for k, a in values.items():
        if not _is_float(a) or not a.size:
            continue
        a = np.abs(a if a.dtype.itemsize >= 4 else a.astype(np.float32))
        if not np.isfinite(a).all():
            a = a[np.isfinite(a)]
            if not a.size:
                continue
        zeros = a.size - int(np.count_nonzero(a))
        nonzero += a.size - zeros
        top = float(a.max())
        for fmt, rng in FORMAT_RANGE.items():
            r = acc[fmt]
            if top > r["max_abs"]:
                r["max_abs"], r["max_key"] = top, k
            over = int((a >= rng["overflow"]).sum()) if top >= rng["overflow"] else 0
            if over:
                r["overflow"] += over
                r["overflow_keys"].append(k)
            half_tiny = rng["subnormal"] / 2
            r["subnormal"] += int((a < rng["normal"] - half_tiny).sum()) - zeros
            flushed = int((a <= half_tiny).sum()) - zeros
            if flushed:
                r["zero"] += flushed
                r["zero_keys"].append(k)
    out = {}
    for fmt, r in acc.items():
        limit = FORMAT_RANGE[fmt]["max"]
        out[fmt] = {"limit": limit, "max_abs": r["max_abs"], "max_key": r["max_key"],
                    "headroom": limit / r["max_abs"] if r["max_abs"] else None,
                    "overflow": r["overflow"], "overflow_keys": r["overflow_keys"],
                    "subnormal_share": r["subnormal"] / nonzero if nonzero else 0.0,
                    "zero_share": r["zero"] / nonzero if nonzero else 0.0,
                    "zero_keys": r["zero_keys"]}
    return out


def _dtypes(infos: Mapping[str, TensorInfo]) -> Dict[str, Any]:
    from ..io.contents import tensor_totals

    counts = tensor_totals(infos)["dtypes"]
    floats = {d: n for d, n in counts.items() if d in FLOAT_DTYPES}
    return {"counts": counts, "mixed": len(floats) > 1}


def eps_sensitivity(values: Mapping[str, Any], det: Detection,
                    eps: Tuple[float, float] = EPS_PROBE) -> Dict[str, Any]:
    """Relative change max|K(b) - K(a)| / max|K(a)| of each block's fused kernel between
    eps a and b, measured with the tool's fusion (float64), by block as the file names it.
    Needs torch."""
    import numpy as np
    import torch

    from ..errors import BadInput
    from ..fuse.fusion import fuse_block

    lay = get_layout(det.layout)
    by_block: Dict[str, Dict[str, Any]] = {}
    for e in det.entries():
        key = det.full_key(e.key)
        if e.block and e.kind != "counter" and key in values:
            # shared with the loaded tensor; a read-only (memory-mapped) array is copied
            a = values[key]
            by_block.setdefault(e.block, {})[e.key] = torch.from_numpy(
                a if a.flags.writeable else np.array(a))
    blocks: Dict[str, Optional[float]] = {}
    skipped: List[str] = []
    for b in det.arch.block_specs():
        path = lay.block_path(b)
        kernel = f"{path}.{lay.part('reparam')}.weight"
        try:
            k_a, k_b = (fuse_block(by_block.get(b.name, {}), b, eps=e, dtype=torch.float64,
                                   layout=det.layout)[kernel] for e in eps)
        except (BadInput, KeyError):  # a negative variance (a fault of its own), a missing key
            blocks[block_name(det, b)] = None
            skipped.append(block_name(det, b))
            continue
        top = float(k_a.abs().max())
        change = float((k_b - k_a).abs().max()) / top if top else 0.0
        blocks[block_name(det, b)] = change if np.isfinite(change) else None
        if blocks[block_name(det, b)] is None:
            skipped.append(block_name(det, b))
    ranked = sorted(((v, k) for k, v in blocks.items() if v is not None), reverse=True)
    return {"measured": True, "eps": list(eps), "warn_level": EPS_SENSITIVITY_WARN,
            "max": ranked[0][0] if ranked else None,
            "worst": [{"block": k, "change": v} for v, k in ranked[:WORST_SHOWN]],
            "above": sum(v > EPS_SENSITIVITY_WARN for v, _ in ranked),
            "blocks": blocks, "not_measured": skipped}


def _eps_part(values: Mapping[str, Any], det: Optional[Detection]) -> Dict[str, Any]:
    if det is None:
        return {"measured": False, "reason": "not a MobileOne the tool recognises"}
    if det.form != "train":
        return {"measured": False,
                "reason": "deploy form: the BatchNorm statistics are already folded into the "
                          "kernels, so eps cannot be changed or measured"}
    return eps_sensitivity(values, det)


def _issues(h: Dict[str, Any]) -> List[Dict[str, str]]:
    """Faults and warnings, one line each naming the tensors, with a topic a caller can match
    ('non_finite', 'negative_var', 'zero_var', 'dead_branch', 'dead_channel', 'dead_block',
    'eps', 'overflow', 'underflow', 'dtype_mix')."""
    issues: List[Dict[str, str]] = []

    def fault(topic: str, message: str) -> None:
        issues.append({"level": "fault", "topic": topic, "message": message})

    def warn(topic: str, message: str) -> None:
        issues.append({"level": "warning", "topic": topic, "message": message})

    bad = h.get("non_finite") or []
    if bad:
        shown = [f"{b['key']} ({b['nan']} NaN, {b['inf']} Inf)" for b in bad]
        fault("non_finite", f"NaN/Inf in {len(bad)} tensor(s): {_few(shown)}")
    var = h.get("variance")
    if var and var["negative"]:
        shown = [f"{v['key']} ({v['count']}, min {v['min']:.3g})" for v in var["negative"]]
        fault("negative_var", f"negative running_var in {len(var['negative'])} BatchNorm(s): "
                      f"{_few(shown)}; a variance cannot be negative")
    if var and var["zero"]:
        n = sum(v["count"] for v in var["zero"])
        warn("zero_var", f"running_var == 0 in {n} channel(s) of {len(var['zero'])} BatchNorm(s) "
                     f"({_few([v['key'] for v in var['zero']])}): dead channels, whose fused "
                     f"weights are set by eps alone")
    dead = h.get("dead")
    if dead and dead["branches"]:
        warn("dead_branch", f"{len(dead['branches'])} dead branch(es), gamma == 0 in every "
                            f"channel: "
                     f"{_few(dead['branches'])}")
    if dead and dead["channels"]:
        n = sum(c["count"] for c in dead["channels"])
        warn("dead_channel", f"gamma == 0 in {n} channel(s) of {len(dead['channels'])} "
                             f"BatchNorm(s) "
                     f"({_few([c['key'] for c in dead['channels']])})")
    if dead and dead["blocks"]:
        n = sum(b["channels"] for b in dead["blocks"])
        warn("dead_block", f"{n} block output channel(s) are constant (no branch passes the "
                           f"input) in "
                     f"{_few([b['block'] for b in dead['blocks']])}")
    eps = h.get("eps")
    if eps and eps.get("measured") and eps["max"] is not None and \
            eps["max"] > EPS_SENSITIVITY_WARN:
        a, b = eps["eps"]
        worst = ", ".join(f"{w['block']} {w['change']:.1e}" for w in eps["worst"])
        warn("eps", f"eps sensitivity: fused kernels change by up to {eps['max']:.1e} between "
                     f"BatchNorm eps {a:.0e} and {b:.0e} ({worst}; {eps['above']} of "
                     f"{len(eps['blocks']) - len(eps['not_measured'])} measured blocks above "
                     f"{EPS_SENSITIVITY_WARN:.0e}): the "
                     f"training eps, which checkpoints do not store, decides the deploy weights: "
                     f"give convert/verify the right --bn-eps")
    for fmt, r in (h.get("headroom") or {}).items():
        if r["overflow"]:
            warn("overflow", f"{fmt}: {r['overflow']} value(s) beyond its range of "
                             f"{r['limit']:.5g} "
                         f"(largest |x| {r['max_abs']:.3g}, in {_few(r['overflow_keys'])}); "
                         f"stored as {fmt} they become inf")
        if r["zero_share"] > FLUSH_WARN_SHARE:
            warn("underflow", f"{fmt}: {r['zero_share']:.2%} of the nonzero values would round to "
                         f"zero (in {_few(r['zero_keys'])})")
    dt = h.get("dtypes")
    if dt and dt["mixed"]:
        mix = ", ".join(f"{d}: {n}" for d, n in dt["counts"].items() if d in FLOAT_DTYPES)
        warn("dtype_mix", f"mixed float dtypes ({mix} tensors)")
    return issues


def checkpoint_health(values: Mapping[str, Any], infos: Mapping[str, TensorInfo],
                      det: Optional[Detection] = None, *, parts: Sequence[str] = PARTS,
                      scan_keys: Optional[Iterable[str]] = None,
                      unread: Sequence[str] = ()) -> Dict[str, Any]:
    """The health report of a checkpoint's tensors.

    ``values``: {key: numpy array} (``io.arrays``); ``infos``: {key: (dtype, shape)} of every
    tensor, as listed; ``det``: the MobileOne found in them, if any.  ``parts`` picks what to
    measure (PARTS; CHEAP_PARTS skip the pass over every value and the fusion); ``scan_keys``
    limits the NaN/Inf scan (a caller that has already refused NaN elsewhere).  ``unread``: keys
    whose values could not be read (a dtype numpy lacks)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown health parts: {sorted(unknown)}")
    h: Dict[str, Any] = {"measured": [p for p in PARTS if p in parts], "unread": list(unread)}
    bns = _batchnorms(values)
    if "finite" in parts:
        h["non_finite"] = _finite(values, values if scan_keys is None else scan_keys)
    if "variance" in parts:
        h["variance"] = _variance(values, bns)
    if "dead" in parts:
        h["dead"] = _dead(values, bns, det)
    if "eps" in parts:
        h["eps"] = _eps_part(values, det)
    if "headroom" in parts:
        h["headroom"] = _headroom(values)
    if "dtypes" in parts:
        h["dtypes"] = _dtypes(infos)
    h["issues"] = _issues(h)
    faults = [i["message"] for i in h["issues"] if i["level"] == "fault"]
    h["faults"] = faults
    h["warnings"] = [i["message"] for i in h["issues"] if i["level"] == "warning"]
    h["verdict"] = "faults" if faults else "warnings" if h["warnings"] else "healthy"
    return h
