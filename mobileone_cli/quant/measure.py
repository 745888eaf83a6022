"""What int8 post-training quantization does to our MobileOne, block by block.

A *unit* is a block of :func:`~mobileone_cli.check.localize.compared_modules` (``stage0``,
``stage1.0``, ..., then the head ``linear``).  Quantizing a unit means (see :mod:`.fakequant`):

* its weights rounded to int8 (deploy form: the fused conv; train form: each branch's conv with
  its BatchNorm folded in, as PTQ tools fold conv+BN, and the identity BatchNorm's per-channel
  scale; SE convs in both), biases kept (int32 in a real kernel: negligible);
* its output rounded to affine int8 with the range seen during calibration (train form: every
  branch's output too, before the sum), and, for the stem and the head, their input as well.

Forward hooks do the activation rounding and the weights are swapped in place, so each unit's
own forward runs; the fp32 and the int8 networks run side by side, unit by unit, in forward
order.  For each unit two SQNRs of its output against the fp32 model's:

* ``own``: only this unit quantized, fed the fp32 model's input of the unit;
* ``cumulative``: every unit quantized (the whole int8 network), measured at this unit.

and, only this unit quantized, the SQNR of its median output channel.  A unit whose median
channel keeps far less than the typical unit's (``QUANT_FLAG_DB``) is flagged: it is where the
int8 error comes from (see :func:`flag_blocks`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..check.localize import HEAD, compared_modules, head_input
from ..check.tally import Accuracy, Agreement
from ..models.mobileone import DeployBlock, TrainBlock
from ..rules.tolerances import QUANT_FLAG_DB
from .biascorrect import corrected_bias
from .fakequant import ChannelNoise, Noise, Observer, channel_spread, fake_quant, quantize_weight

__all__ = ["Unit", "BlockResult", "FormResult", "plan_units", "measure", "flag_blocks",
           "Batches"]

Batches = Callable[[], Iterable[Tuple[torch.Tensor, torch.Tensor, List[str]]]]


@dataclass
class Unit:
    """One block (or the head) and what quantizing it changes."""

    name: str
    stage: int
    module: nn.Module
    swaps: List[Tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)  # (p, int8 value)
    points: List[Tuple[nn.Module, str, Observer]] = field(default_factory=list)  # 'pre'/'post'
    spread: Optional[float] = None
    branches: int = 1


@dataclass
class BlockResult:
    name: str
    stage: int
    spread: Optional[float]  # max/median of per-channel max |w| (train: the worst branch)
    own_db: Optional[float]  # the block's output, only this block int8
    cumulative_db: Optional[float]  # the block's output, every block int8
    channel_db: Optional[float] = None  # the median channel's SQNR, only this block int8
    branches: int = 1
    flagged: bool = False


@dataclass
class FormResult:
    """The measurements of one form (deploy or train) under one scheme."""

    form: str
    scheme: str
    blocks: List[BlockResult]
    output_db: Optional[float]  # the network's output (logits, or the last feature map)
    images: int = 0
    top1_agreement: Optional[float] = None
    top5_agreement: Optional[float] = None
    max_abs_diff: float = 0.0
    scale: float = 0.0  # max |fp32 output|
    accuracy_fp32: Optional[Tuple[Optional[float], Optional[float]]] = None  # (top-1, top-k)
    accuracy_int8: Optional[Tuple[Optional[float], Optional[float]]] = None
    topk: int = 5
    flagged: List[str] = field(default_factory=list)  # worst first
    typical_db: Optional[float] = None  # the median block's channel_db
    unmeasurable: List[str] = field(default_factory=list)  # ranges or sums not finite


def _bn_scale(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(t, std) of an eval-mode BatchNorm in float64: BN(y) = t * y + shift."""
    std = torch.sqrt(bn.running_var.to(torch.float64) + bn.eps)
    return bn.weight.detach().to(torch.float64) / std, std


def _conv_bn_swap(seq: nn.Sequential, scheme: str) -> Tuple[Tuple[nn.Parameter, torch.Tensor],
                                                             Optional[float]]:
    """A branch conv whose BN-folded kernel W*t is rounded to int8, written back unfolded."""
    w = seq.conv.weight
    t, _ = _bn_scale(seq.bn)
    tt = t.reshape(-1, *([1] * (w.dim() - 1)))
    folded = w.detach().to(torch.float64) * tt
    q = quantize_weight(folded, scheme)
    safe_t = torch.where(tt == 0, torch.ones_like(tt), tt)
    back = torch.where(tt == 0, w.detach().to(torch.float64), q / safe_t)
    return (w, back.to(w.dtype)), channel_spread(folded)


def _identity_swaps(bn: nn.BatchNorm2d, scheme: str):
    """The identity branch is a per-channel scale t (a depthwise 1x1 kernel): rounded to int8,
    the BN's weight and bias rewritten so that it computes x * t_q + (beta - mean * t)."""
    t, std = _bn_scale(bn)
    tq = quantize_weight(t.reshape(-1, 1, 1, 1), scheme).reshape(-1)
    mean = bn.running_mean.to(torch.float64)
    beta = bn.bias.detach().to(torch.float64)
    gamma_q = tq * std
    beta_q = beta - mean * t + mean * tq
    return [(bn.weight, gamma_q.to(bn.weight.dtype)), (bn.bias, beta_q.to(bn.bias.dtype))], \
        channel_spread(t.reshape(-1, 1))


def _se_swaps(block: nn.Module, scheme: str):
    se = getattr(block, "se", None)
    if se is None or not hasattr(se, "reduce"):
        return []
    return [(c.weight, quantize_weight(c.weight, scheme)) for c in (se.reduce, se.expand)]


def _weight_swaps(layer: nn.Module, scheme: str, mean: Optional[torch.Tensor]):
    """The int8 weight of a conv or linear layer, and, when its mean input is known, its bias
    corrected for the rounding's expected shift (:mod:`.biascorrect`)."""
    w = layer.weight
    wq = quantize_weight(w, scheme)
    swaps = [(w, wq)]
    if mean is not None and layer.bias is not None:
        swaps.append((layer.bias, corrected_bias(layer.bias, w, wq, mean,
                                                 getattr(layer, "groups", 1))))
    return swaps


def plan_units(model: nn.Module, scheme: str,
               expected: Optional[Dict[str, torch.Tensor]] = None) -> List[Unit]:
    """The units of ``model`` (deploy or train form, eval mode) and their int8 weights;
    ``expected`` (deploy form): the mean input of each block by name, for bias correction."""
    units = []
    expected = expected or {}
    for name, stage, mod in compared_modules(model):
        u = Unit(name=name, stage=stage, module=mod)
        if name == HEAD:
            u.swaps = _weight_swaps(mod, scheme, expected.get(name))
            u.spread = channel_spread(mod.weight)
            u.points = [(mod, "pre", Observer(f"{name} input"))]
        elif isinstance(mod, DeployBlock):
            u.swaps = (_weight_swaps(mod.reparam_conv, scheme, expected.get(name))
                       + _se_swaps(mod, scheme))
            u.spread = channel_spread(mod.reparam_conv.weight)
        elif isinstance(mod, TrainBlock):
            spreads = []
            seqs = [(f"rbr_conv.{i}", s) for i, s in enumerate(mod.rbr_conv)]
            if mod.rbr_scale is not None:
                seqs.append(("rbr_scale", mod.rbr_scale))
            for bname, seq in seqs:
                swap, spread = _conv_bn_swap(seq, scheme)
                u.swaps.append(swap)
                spreads.append(spread)
                u.points.append((seq, "post", Observer(f"{name}.{bname}")))
            if mod.rbr_skip is not None:
                swaps, spread = _identity_swaps(mod.rbr_skip, scheme)
                u.swaps += swaps
                spreads.append(spread)
                u.points.append((mod.rbr_skip, "post", Observer(f"{name}.rbr_skip")))
            u.swaps += _se_swaps(mod, scheme)
            known = [s for s in spreads if s is not None]
            u.spread = max(known) if known else None
            u.branches = len(spreads)
        else:
            raise TypeError(f"{name}: not a MobileOne block ({type(mod).__name__})")
        if stage == 0:
            u.points.insert(0, (mod, "pre", Observer("input")))
        u.points.append((mod, "post", Observer(name)))
        units.append(u)
    return units


class _Hooks:
    """The activation hooks of every unit, and which units are quantized right now."""

    def __init__(self, units: Sequence[Unit]) -> None:
        self.observing = False
        self.active: set = set()
        self.handles = []
        for u in units:
            for mod, where, obs in u.points:
                if where == "pre":
                    self.handles.append(mod.register_forward_pre_hook(self._pre(u.name, obs)))
                else:
                    self.handles.append(mod.register_forward_hook(self._post(u.name, obs)))

    def _apply(self, unit: str, obs: Observer, x: torch.Tensor) -> Optional[torch.Tensor]:
        if self.observing:
            obs.observe(x)
            return None
        if unit in self.active:
            scale, zero = obs.qparams()
            return fake_quant(x, scale, zero) if math.isfinite(scale) else None
        return None

    def _pre(self, unit: str, obs: Observer):
        def hook(mod, args):
            y = self._apply(unit, obs, args[0])
            return None if y is None else (y,) + tuple(args[1:])
        return hook

    def _post(self, unit: str, obs: Observer):
        def hook(mod, args, out):
            return self._apply(unit, obs, out)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def _int8_weights(units: Iterable[Unit]) -> Iterator[None]:
    saved = []
    try:
        for u in units:
            for p, q in u.swaps:
                saved.append((p, p.data))
                p.data = q
        yield
    finally:
        for p, data in reversed(saved):
            p.data = data


def _chunks(batches: Batches, per_pass: int):
    for x, labels, names in batches():
        for i in range(0, x.shape[0], per_pass):
            yield x[i:i + per_pass], labels[i:i + per_pass], names[i:i + per_pass]


def measure(model: nn.Module, batches: Batches, *, scheme: str, form: str, per_pass: int = 4,
            logits: bool = True, num_classes: int = 0,
            expected: Optional[Dict[str, torch.Tensor]] = None) -> FormResult:
    """Calibrate on ``batches()`` (fp32 ranges), then measure on them again: each unit alone,
    the whole int8 network, the output's agreement (and accuracy when labelled); ``expected``:
    see :func:`plan_units`."""
    units = plan_units(model, scheme, expected)
    hooks = _Hooks(units)
    own = {u.name: Noise() for u in units}
    cumulative = {u.name: Noise() for u in units}
    channels = {u.name: ChannelNoise() for u in units}
    out_noise = Noise()
    agreement = Agreement(logits=logits)
    top5 = 0
    acc32 = Accuracy(num_classes) if logits else None
    acc8 = Accuracy(num_classes) if logits else None
    labelled = False
    try:
        with torch.inference_mode():
            hooks.observing = True
            for x, _, _ in _chunks(batches, per_pass):
                model(x)
            hooks.observing = False
            for x, labels, names in _chunks(batches, per_pass):
                # The fp32 network and the int8 one side by side, unit by unit, in forward
                # order (only the current activations alive); each unit also runs int8 on the
                # fp32 input (its own error).
                ref = out = x
                for u in units:
                    if u.name == HEAD:
                        ref, out = head_input(model, ref), head_input(model, out)
                    hooks.active = set()
                    y = u.module(ref)
                    hooks.active = {u.name}
                    with _int8_weights([u]):
                        alone, out = u.module(ref), u.module(out)
                    hooks.active = set()
                    own[u.name].update(y, alone)
                    channels[u.name].update(y, alone)
                    cumulative[u.name].update(y, out)
                    ref = y
                out_noise.update(ref, out)
                agreement.update(ref, out, names, labels)
                if logits:
                    from ..check.harness import compare_outputs

                    top5 += round((compare_outputs(ref, out).top5 or 0.0) * x.shape[0])
                    if acc32 is not None and acc8 is not None and bool((labels >= 0).all()):
                        labelled = True
                        acc32.update(ref, labels)
                        acc8.update(out, labels)
    finally:
        hooks.remove()
    blocks = [BlockResult(name=u.name, stage=u.stage, spread=u.spread, own_db=own[u.name].db,
                          cumulative_db=cumulative[u.name].db,
                          channel_db=channels[u.name].median_db, branches=u.branches)
              for u in units]
    res = FormResult(form=form, scheme=scheme, blocks=blocks, output_db=out_noise.db,
                     images=agreement.images, max_abs_diff=agreement.max_abs,
                     scale=agreement.scale, topk=acc32.k if acc32 is not None else 5)
    if logits and agreement.images:
        res.top1_agreement = agreement.agreement
        res.top5_agreement = top5 / agreement.images
    if labelled and acc32 is not None and acc8 is not None:
        res.accuracy_fp32 = (acc32.top1, acc32.topk)
        res.accuracy_int8 = (acc8.top1, acc8.topk)
    res.unmeasurable = [obs.name for u in units for _, _, obs in u.points if not obs.finite]
    res.flagged, res.typical_db = flag_blocks(blocks)
    return res


def flag_blocks(blocks: Sequence[BlockResult]) -> Tuple[List[str], Optional[float]]:
    """Blocks whose median channel, quantized alone, keeps at least QUANT_FLAG_DB less SQNR
    than the median block's does (10x the noise or more), worst first: they dominate the int8
    error.  The median channel, not the whole tensor: one channel with a wide range crushes
    every other channel of the block, yet carries most of the tensor's energy, so the tensor's
    SQNR barely shows what the next block receives."""
    known = sorted(b.channel_db for b in blocks
                   if b.channel_db is not None and math.isfinite(b.channel_db))
    if not known:
        return [], None
    typical = known[(len(known) - 1) // 2]
    bad = sorted((b for b in blocks if b.channel_db is not None
                  and b.channel_db <= typical - QUANT_FLAG_DB), key=lambda b: b.channel_db or 0.0)
    for b in bad:
        b.flagged = True
    return [b.name for b in bad], typical
