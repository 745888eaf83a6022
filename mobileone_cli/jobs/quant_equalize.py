"""``mobileone quant --equalize``: int8 before and after data-free quantization, side by side.

Before: the deploy model as ``quant`` measures it.  After: the equalized deploy model
(:mod:`..fuse.equalize`, the same function in fp32) whose int8 path carries the bias correction
(:mod:`..quant.biascorrect`, from the train checkpoint's BatchNorm statistics).  Both weight
schemes are measured on the same images, so the table says which scheme needs it and how much
it buys.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List

__all__ = ["EqualizedQuant", "measure_equalized"]


@dataclass
class EqualizedQuant:
    """Per scheme, the int8 measurements before and after (quant.measure.FormResult)."""

    equalization: Any  # fuse.equalize.Equalization
    bias_corrected: bool
    before: Dict[str, Any] = field(default_factory=dict)
    after: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)


def measure_equalized(side, images, plain, kw: Dict[str, Any], deploy) -> tuple:
    """(EqualizedQuant, the quant.dfq.Equalized model) for ``side`` (jobs.verify.Side);
    ``plain``: the FormResult already measured for ``kw['scheme']``; ``deploy``: the plain
    deploy model."""
    from ..quant.dfq import equalize_source
    from ..quant.fakequant import SCHEMES
    from ..quant.measure import measure

    t0 = time.perf_counter()
    eq = equalize_source(side.state_dict, side.arch, form=side.form, layout=side.layout,
                         eps=side.eps)
    res = EqualizedQuant(equalization=eq.equalization, bias_corrected=eq.expected is not None)
    if eq.expected is None:
        res.notes.append("deploy-form checkpoint: no BatchNorm statistics, so no bias "
                         "correction (give the train checkpoint for it)")
    if not eq.equalization.converged:
        res.notes.append(f"equalization stopped after {eq.equalization.sweeps} sweeps, scales "
                         f"still moving by {eq.equalization.residual:.1%}")
    for scheme in SCHEMES:
        args = dict(kw, scheme=scheme)
        res.before[scheme] = plain if scheme == kw["scheme"] else measure(
            deploy, images, form="deploy", **args)
        res.after[scheme] = measure(eq.model, images, form="deploy equalized",
                                    expected=eq.expected, **args)
    res.seconds = time.perf_counter() - t0
    return res, eq
