"""Cross-layer equalization of a fused MobileOne (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019), as pure float64 functions on state dicts.

A deploy MobileOne is a plain chain: every block is ``ReLU(SE(conv(x)))`` (SE only in some
blocks) and the head is ``linear(mean(x))``.  For consecutive layers 1 -> 2 and any s_i > 0,

    ReLU(y / s) = ReLU(y) / s        (positive homogeneity, per channel)

so dividing output channel i of conv 1 (its weights and its bias) by s_i and multiplying input
channel i of layer 2 by s_i computes the same function.  Zero padding stays zero under the
scaling, the head's mean is linear, and a depthwise consumer's input channel i is its own
filter i (the grouped-conv indexing below covers both).  Where the producer has an SE block the
pair is skipped: SE multiplies y by ``sigmoid(expand(relu(reduce(mean(y)))))``, a gate computed
from y's own scale, so ``SE(y / s) != SE(y) / s``.

The rule is the paper's: with r1_i the range (max |w|) of conv 1's output channel i and r2_i the
range of layer 2's input channel i, ``s_i = sqrt(r1_i / r2_i)`` makes both ranges
``sqrt(r1_i r2_i)``.  A layer in the middle of a chain belongs to two pairs, so the pairs are
swept in order until no scale moves by more than ``tol`` (the paper iterates to convergence;
along MobileOne's long chain the last few percent take hundreds of sweeps and change no range by
more than a few percent, so the default stops at 2%).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..arch.specs import ArchSpec, BlockSpec

__all__ = ["Pair", "Equalization", "equalize_state_dict", "equalize_train_state_dict",
           "pair_scales", "out_ranges", "in_ranges", "HEAD", "DEFAULT_TOL", "DEFAULT_SWEEPS",
           "SE_REASON"]

HEAD = "linear"  # the classifier, in Apple's (canonical) names
DEFAULT_TOL = 0.02  # converged: no scale of a sweep moved by more than 2%
DEFAULT_SWEEPS = 100
SE_REASON = ("the first layer's output goes through an SE block before its ReLU: the gate "
             "sigmoid(f(mean(y))) depends on y's scale, so SE(y/s) != SE(y)/s")


@dataclass
class Pair:
    """Two consecutive layers and what equalization did (or why it could not)."""

    producer: str
    consumer: str
    kind: str  # 'stem->dw', 'dw->pw', 'pw->dw', 'pw->head'
    equalized: bool
    reason: str = ""  # why it was skipped
    scales: Optional[torch.Tensor] = None  # float64: producer's out channel i divided by s_i
    spread_before: Optional[float] = None  # producer weight: max/median of per-channel ranges
    spread_after: Optional[float] = None

    def describe(self) -> Dict[str, object]:
        s = self.scales
        return {"producer": self.producer, "consumer": self.consumer, "kind": self.kind,
                "equalized": self.equalized, "reason": self.reason or None,
                "scale_min": float(s.min()) if s is not None else None,
                "scale_max": float(s.max()) if s is not None else None,
                "spread_before": self.spread_before, "spread_after": self.spread_after}


@dataclass
class Equalization:
    """Every consecutive pair of the network, and how the sweeps ended."""

    pairs: List[Pair] = field(default_factory=list)
    sweeps: int = 0
    converged: bool = True
    residual: float = 0.0  # the largest |log s| of the last sweep

    @property
    def equalized(self) -> List[Pair]:
        return [p for p in self.pairs if p.equalized]

    @property
    def skipped(self) -> List[Pair]:
        return [p for p in self.pairs if not p.equalized]

    def out_scale(self, producer: str) -> Optional[torch.Tensor]:
        """The s of ``producer``'s output channels (None: left as it was)."""
        for p in self.pairs:
            if p.producer == producer and p.equalized:
                return p.scales
        return None

    def describe(self) -> Dict[str, object]:
        return {"sweeps": self.sweeps, "converged": self.converged, "residual": self.residual,
                "equalized": len(self.equalized), "skipped": len(self.skipped),
                "pairs": [p.describe() for p in self.pairs]}


def _kind(a: BlockSpec, b: Optional[BlockSpec]) -> str:
    def name(s: Optional[BlockSpec]) -> str:
        if s is None:
            return "head"
        if s.stage == 0:
            return "stem"
        return "dw" if s.groups > 1 else "pw"
    return f"{name(a)}->{name(b)}"


def _groups(spec: Optional[BlockSpec]) -> int:
    return 1 if spec is None else spec.groups


def out_ranges(w: torch.Tensor) -> torch.Tensor:
    """max |w| of each output channel (dim 0)."""
    return _row_max(w.abs())


def in_ranges(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """max |w| of each input channel of a (grouped) conv or linear weight: input channel
    ``g * (I/g) + j`` is column j of the filters of group g (a depthwise filter i: its own)."""
    return _col_max(w.abs(), groups)


def _row_max(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1).amax(dim=1)


def _col_max(a: torch.Tensor, groups: int) -> torch.Tensor:
    o, per = a.shape[0], a.shape[1]
    return a.reshape(groups, o // groups, per, -1).amax(dim=(1, 3)).reshape(groups * per)


def _scale_inputs(w: torch.Tensor, s: torch.Tensor, groups: int) -> torch.Tensor:
    o, per = w.shape[0], w.shape[1]
    shaped = w.reshape(groups, o // groups, per, -1) * s.reshape(groups, 1, per, 1)
    return shaped.reshape(w.shape)


def pair_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """The paper's s_i = sqrt(r1_i / r2_i); 1 where either range is 0 (a dead channel)."""
    live = (r1 > 0) & (r2 > 0)
    safe1 = torch.where(live, r1, torch.ones_like(r1))
    safe2 = torch.where(live, r2, torch.ones_like(r2))
    return torch.where(live, torch.sqrt(safe1 / safe2), torch.ones_like(r1))


def _spread(w: torch.Tensor) -> Optional[float]:
    r = out_ranges(w)
    med = float(r.median())
    return float(r.max()) / med if r.numel() > 1 and med > 0 else None


def _chain(arch: ArchSpec) -> List[Tuple[BlockSpec, Optional[BlockSpec]]]:
    specs = list(arch.block_specs())
    nxt: List[Optional[BlockSpec]] = specs[1:] + [None]
    return [(a, b) for a, b in zip(specs, nxt) if b is not None or arch.has_head]


def equalize_state_dict(sd: Mapping[str, torch.Tensor], arch: ArchSpec, *,
                        tol: float = DEFAULT_TOL, max_sweeps: int = DEFAULT_SWEEPS,
                        dtype: Optional[torch.dtype] = None
                        ) -> Tuple[Dict[str, torch.Tensor], Equalization]:
    """``sd`` (deploy form, Apple names) equalized: the same function, in float64 throughout and
    rounded once to ``dtype`` (default: each tensor's own); the pairs and their scales."""
    w: Dict[str, torch.Tensor] = {k: v.detach().to(torch.float64, copy=True)
                                  for k, v in sd.items()}

    def wkey(spec: Optional[BlockSpec]) -> str:
        return f"{HEAD}.weight" if spec is None else f"{spec.name}.reparam_conv.weight"

    eq = Equalization()
    live: List[Tuple[Pair, BlockSpec, Optional[BlockSpec]]] = []
    for a, b in _chain(arch):
        pair = Pair(a.name, HEAD if b is None else b.name, _kind(a, b), equalized=False,
                    spread_before=_spread(w[wkey(a)]))
        if a.has_se:
            pair.reason = SE_REASON
        elif not bool(torch.isfinite(w[wkey(a)]).all() and torch.isfinite(w[wkey(b)]).all()):
            pair.reason = "weights not finite"
        else:
            pair.equalized = True
            pair.scales = torch.ones(a.out_channels, dtype=torch.float64)
            live.append((pair, a, b))
        eq.pairs.append(pair)
    # The sweeps move only |W| (scaling commutes with abs), in place; W itself is scaled once,
    # by each pair's product of scales, at the end.
    absw = {wkey(x): w[wkey(x)].abs() for pair, a, b in live for x in (a, b)}
    for sweep in range(1, max_sweeps + 1):
        worst = 0.0
        for pair, a, b in live:
            a1, a2, g2 = absw[wkey(a)], absw[wkey(b)], _groups(b)
            s = pair_scales(_row_max(a1), _col_max(a2, g2))
            a1.div_(s.reshape((-1,) + (1,) * (a1.dim() - 1)))
            a2.view(g2, a2.shape[0] // g2, a2.shape[1], -1).mul_(s.view(g2, 1, -1, 1))
            pair.scales = pair.scales * s
            worst = max(worst, float(torch.log(s).abs().max()))
        eq.sweeps, eq.residual = sweep, worst
        if worst <= tol:
            break
    del absw
    for pair, a, b in live:
        s = pair.scales
        w[wkey(a)] = w[wkey(a)] / s.reshape((-1,) + (1,) * (w[wkey(a)].dim() - 1))
        w[f"{a.name}.reparam_conv.bias"] = w[f"{a.name}.reparam_conv.bias"] / s
        w[wkey(b)] = _scale_inputs(w[wkey(b)], s, _groups(b))
    eq.converged = eq.residual <= tol
    for pair, a, _ in live:
        pair.spread_after = _spread(w[wkey(a)])
    out = {k: v.to(dtype if dtype is not None else sd[k].dtype) for k, v in w.items()}
    return out, eq



def equalize_train_state_dict(sd: Mapping[str, torch.Tensor], arch: ArchSpec,
                              eq: Equalization) -> Dict[str, torch.Tensor]:
    """The train form (Apple names) reparameterized by ``eq``'s scales, in float64: the same
    function, and block for block what the equalized deploy form computes (the reference the
    verdict checks it against).  A producer's block output is the sum of its branches'
    BatchNorms, so every one of them has gamma and beta divided by s; a consumer's conv
    branches take s on their input channels, and its identity BatchNorm, fed x / s, computes
    the same with mean / s and gamma * s."""
    out = {k: (v.detach().to(torch.float64, copy=True) if v.is_floating_point() else v)
           for k, v in sd.items()}
    specs = {b.name: b for b in arch.block_specs()}
    for p in eq.equalized:
        s, a = p.scales, specs[p.producer]
        for key in [k for k in out if k.startswith(f"{a.name}.rbr_")]:
            if key.endswith(".bn.weight") or key.endswith(".bn.bias") or key in (
                    f"{a.name}.rbr_skip.weight", f"{a.name}.rbr_skip.bias"):
                out[key] = out[key] / s
        if p.consumer == HEAD:
            out[f"{HEAD}.weight"] = _scale_inputs(out[f"{HEAD}.weight"], s, 1)
            continue
        b = specs[p.consumer]
        for key in [k for k in out if k.startswith(f"{b.name}.rbr_")]:
            if key.endswith(".conv.weight"):
                out[key] = _scale_inputs(out[key], s, b.groups)
        if b.has_identity:
            out[f"{b.name}.rbr_skip.running_mean"] = out[f"{b.name}.rbr_skip.running_mean"] / s
            out[f"{b.name}.rbr_skip.weight"] = out[f"{b.name}.rbr_skip.weight"] * s
    return out
