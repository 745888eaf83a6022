"""Fusion of the blocks :mod:`.generic` finds, and a check of each block against its own
branches run in float64 (a reference that shares no code with the fusion).

Every branch folds to a (kernel, bias) pair in float64: a conv+BN to W * t and beta - mu * t
(mu less the conv's bias), a BatchNorm on the input to an identity kernel times t, the input
itself to an identity kernel, a nested block to its own fused pair.  Smaller kernels are
zero-padded to the block's, signs and the per-channel layer scale applied, the pairs summed,
and the result rounded once to the block's dtype.  Work runs in slices of output channels, so
the float64 working set stays a few MiB even for RepVGG-B3's widest blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..arch.blocks import PATTERNS, BlockPattern
from ..errors import BadInput
from ..io.detect import tensor_info
from ..rules.limits import DEFAULT_EPS
from ..rules.tolerances import DEFAULT_RTOL, SENSITIVITY_FACTOR, UNIT_ROUNDOFF
from .generic import FoundBlock, Kernel, find_blocks_grouped

__all__ = ["GenericReport", "fuse_generic", "check_blocks", "block_bounds", "fold_block"]

CHUNK_ELEMENTS = 1 << 18


@dataclass
class GenericReport:
    blocks: List[FoundBlock]
    keys_in: int
    keys_out: int = 0
    passthrough: int = 0  # keys copied unchanged
    already_fused: List[str] = field(default_factory=list)  # paths that hold only a fused conv
    left_alone: List[Tuple[str, str, str]] = field(default_factory=list)  # (path, block, why)


def _bn(sd: Mapping[str, Any], bn: Dict[str, str], eps: float, where: str, conv_bias=None):
    import torch

    from .fusion import BatchNormStats, bn_scale_shift

    mean = sd[bn["running_mean"]].to(torch.float64)
    if conv_bias is not None:  # BN(Wx + c) is BN(Wx) with running_mean - c
        mean = mean - sd[conv_bias].to(torch.float64)
    return bn_scale_shift(BatchNormStats(running_mean=mean, running_var=sd[bn["running_var"]],
                                         weight=sd[bn["weight"]] if "weight" in bn else None,
                                         bias=sd[bn["bias"]] if "bias" in bn else None),
                          eps, where)


def _pad(w, kernel: Kernel):
    import torch.nn.functional as F

    kh, kw = kernel
    h, w_ = w.shape[-2:]
    ph, pw = (kh - h) // 2, (kw - w_) // 2
    return F.pad(w, [pw, kw - w_ - pw, ph, kh - h - ph]) if (h, w_) != (kh, kw) else w


def _folded(sd: Mapping[str, Any], b: FoundBlock, eps: float):
    """[(per-channel t or None, weight or 'identity' or nested, bias, sign, scaled)]."""
    import torch

    where = f"block {b.path or '(top level)'}"
    p = b.parts
    assert p is not None  # find_blocks fills it
    out = []
    for br in b.branches:
        mods = p.branches.get(br.name, {}) if br.kind not in ("identity", "block") else {}
        what = f"{where} {br.name or 'identity'}"
        if br.kind == "conv_bn":
            t, shift = _bn(sd, mods["bn"], eps, what, mods["conv"].get("bias"))
            out.append((t, sd[mods["conv"]["weight"]], shift, br))
        elif br.kind == "bn":
            t, shift = _bn(sd, mods["bn"], eps, what)
            out.append((t, "identity", shift, br))
        elif br.kind == "conv":
            bias = mods["conv"].get("bias")
            shift = (sd[bias].to(torch.float64) if bias is not None
                     else torch.zeros(b.out_channels, dtype=torch.float64))
            out.append((None, sd[mods["conv"]["weight"]], shift, br))
        elif br.kind == "identity":
            out.append((None, "identity", torch.zeros(b.out_channels, dtype=torch.float64), br))
        else:
            sub = next(s for s in b.subs if s.path.rpartition(".")[2] == br.name)
            k, shift = fold_block(sd, sub, eps)
            out.append((None, k, shift, br))
    return out


def fold_block(sd: Mapping[str, Any], b: FoundBlock, eps: float = DEFAULT_EPS, dtype=None):
    """(kernel, bias) of one block's deploy conv: float64 throughout, rounded once to ``dtype``
    (None: stay float64)."""
    import torch

    f64 = torch.float64
    kh, kw = b.kernel_size
    cpg, out_ch = b.in_per_group, b.out_channels
    folded = _folded(sd, b, eps)
    gamma = (sd[b.layer_scale_key].to(f64).reshape(-1) if b.layer_scale_key is not None
             else None)
    bias = torch.zeros(out_ch, dtype=f64)
    for _, _, shift, br in folded:
        s = br.sign * (gamma if br.scaled and gamma is not None else 1.0)
        bias += s * shift
    kernel = torch.empty(out_ch, cpg, kh, kw, dtype=dtype or f64)
    rows = max(1, CHUNK_ELEMENTS // max(1, cpg * kh * kw))
    for lo in range(0, out_ch, rows):
        hi = min(out_ch, lo + rows)
        acc = torch.zeros(hi - lo, cpg, kh, kw, dtype=f64)
        idx = torch.arange(lo, hi)
        for t, w, _, br in folded:
            s = torch.full((hi - lo,), float(br.sign), dtype=f64)
            if br.scaled and gamma is not None:
                s = s * gamma[lo:hi]
            if t is not None:
                s = s * t[lo:hi]
            if isinstance(w, str):  # the input itself (times a BatchNorm's t)
                acc[idx - lo, idx % cpg, kh // 2, kw // 2] += s
            else:
                acc.addcmul_(_pad(w[lo:hi].to(f64), (kh, kw)), s.reshape(-1, 1, 1, 1))
        kernel[lo:hi] = acc
    return kernel, bias.to(dtype or f64)


def _dtype(sd: Mapping[str, Any], b: FoundBlock):
    keys = [k for k in b.train_keys if k != b.layer_scale_key]
    for k in keys:
        if len(sd[k].shape) == 4:
            return sd[k].dtype
    return sd[keys[0]].dtype


def fuse_generic(state_dict: Mapping[str, Any], *, eps: float = DEFAULT_EPS,
                 groups: Optional[int] = None, norm_kernel: Optional[Kernel] = None,
                 patterns: Sequence[BlockPattern] = PATTERNS
                 ) -> Tuple[Dict[str, Any], GenericReport]:
    """(new state dict, report): every block fused in float64, every other key passed through.

    The input is not modified; passed-through values are the very same tensor objects.
    """
    info = tensor_info(state_dict)
    blocks, already, grouping = find_blocks_grouped(info, groups=groups,
                                                    norm_kernel=norm_kernel, patterns=patterns)
    if not blocks:
        roots = sorted({b.root for p in patterns for b in p.branches if b.root})
        raise BadInput(f"no re-parameterisable blocks found among {len(info)} keys "
                       f"(looked for {', '.join(roots[:12])}{', ...' if len(roots) > 12 else ''}"
                       f" branches)"
                       + (f"; {len(already)} block(s) are already fused" if already else ""),
                       hint="describe another naming with --blocks FILE.yaml")
    fused = {b.path: fold_block(state_dict, b, eps, _dtype(state_dict, b)) for b in blocks}
    order = {k: i for i, k in enumerate(state_dict)}
    start = {min(b.train_keys, key=order.__getitem__): b for b in blocks}
    consumed = {k for b in blocks for k in b.train_keys}
    out: Dict[str, Any] = {}
    for key, value in state_dict.items():
        if key in start:
            b = start[key]
            for new in (b.weight_key, b.bias_key):
                if (new in state_dict and new not in consumed) or new in out:
                    raise BadInput(f"block {b.path or '(top level)'}: {new} already exists")
            out[b.weight_key], out[b.bias_key] = fused[b.path]
        elif key not in consumed:
            out[key] = value
    left = [(path, p.label, why) for path, p, why in grouping.left_alone]
    report = GenericReport(blocks=blocks, keys_in=len(info), keys_out=len(out),
                           passthrough=len(info) - len(consumed), already_fused=already,
                           left_alone=left)
    return out, report


def _block_input(b: FoundBlock, g):
    import torch

    kh, kw = b.kernel_size
    cin = (b.groups or 1) * b.in_per_group
    return torch.randn(2, cin, 2 * kh + 3, 2 * kw + 3, generator=g, dtype=torch.float64)


def block_bounds(fused: Mapping[str, Any], blocks: Sequence[FoundBlock], *,
                 rtol: Optional[float] = None, seed: int = 0) -> Dict[str, float]:
    """{path: bound on :func:`check_blocks`' max rel diff}: ``rtol`` when given, else the
    checkpoint rule of ``verify`` applied to one block: DEFAULT_RTOL plus SENSITIVITY_FACTOR
    times the relative change of the fused block's output when its stored weight and bias move
    by one unit roundoff of their dtype with random signs (the rounding the stored dtype can
    cause, measured on this block)."""
    import torch
    import torch.nn.functional as F

    if rtol is not None:
        return {b.path: rtol for b in blocks}
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    out: Dict[str, float] = {}
    for b in blocks:
        x = _block_input(b, g)
        kh, kw = b.kernel_size
        w, bias = fused[b.weight_key], fused[b.bias_key]
        unit = UNIT_ROUNDOFF.get(str(w.dtype).replace("torch.", ""), UNIT_ROUNDOFF["float32"])
        moved_w, moved_b = (t.to(f64) * (1 + unit * _random_signs(t.shape, g)) for t in (w, bias))
        conv: Dict[str, Any] = dict(padding=(kh // 2, kw // 2), groups=b.groups or 1)
        y = F.conv2d(x, w.to(f64), bias.to(f64), **conv)
        scale = float(y.abs().max())
        moved = float((F.conv2d(x, moved_w, moved_b, **conv) - y).abs().max())
        out[b.path] = DEFAULT_RTOL + SENSITIVITY_FACTOR * (moved / scale if scale > 0 else 0.0)
    return out


def _random_signs(shape, g):
    """+1 or -1 per element, float64, from generator ``g``."""
    import torch

    return torch.randint(0, 2, shape, generator=g, dtype=torch.float64) * 2 - 1


def _reference(sd, b: FoundBlock, x, eps: float):
    """The block run as it is built: each branch with its own padding, float64."""
    import torch
    import torch.nn.functional as F

    f64 = torch.float64
    groups = b.groups or 1
    p = b.parts

    def bn(y, leaves):
        t = {k: sd[v].to(f64) for k, v in leaves.items() if k != "num_batches_tracked"}
        return F.batch_norm(y, t["running_mean"], t["running_var"], t.get("weight"),
                            t.get("bias"), training=False, eps=eps)

    def conv(mod):
        w = sd[mod["weight"]].to(f64)
        bias = sd[mod["bias"]].to(f64) if "bias" in mod else None
        return F.conv2d(x, w, bias, padding=(w.shape[2] // 2, w.shape[3] // 2), groups=groups)

    gamma = (sd[b.layer_scale_key].to(f64).reshape(1, -1, 1, 1)
             if b.layer_scale_key is not None else None)
    assert p is not None  # find_blocks fills it
    total = torch.zeros(())
    for br in b.branches:
        mods = p.branches.get(br.name, {})
        if br.kind == "conv_bn":
            y = bn(conv(mods["conv"]), mods["bn"])
        elif br.kind == "bn":
            y = bn(x, mods["bn"])
        elif br.kind == "conv":
            y = conv(mods["conv"])
        elif br.kind == "identity":
            y = x
        else:
            sub = next(s for s in b.subs if s.path.rpartition(".")[2] == br.name)
            y = _reference(sd, sub, x, eps)
        if br.scaled and gamma is not None:
            y = gamma * y
        total = total + br.sign * y
    return total


def check_blocks(state_dict: Mapping[str, Any], fused: Mapping[str, Any],
                 blocks: Sequence[FoundBlock], *, eps: float = DEFAULT_EPS, seed: int = 0
                 ) -> Dict[str, float]:
    """{path: max |train - fused| / max |train|} per block, on seeded random inputs.

    The reference runs the branches as they are (each conv with its own padding, then
    F.batch_norm in eval mode; an identity as the input itself) in float64: it shares no code
    with the fusion.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    out: Dict[str, float] = {}
    for b in blocks:
        groups = b.groups or 1
        kh, kw = b.kernel_size
        x = torch.randn(2, groups * b.in_per_group, 2 * kh + 3, 2 * kw + 3, generator=g,
                        dtype=torch.float64)
        ref = _reference(state_dict, b, x, eps)
        got = F.conv2d(x, fused[b.weight_key].to(torch.float64),
                       fused[b.bias_key].to(torch.float64), padding=(kh // 2, kw // 2),
                       groups=groups)
        scale = float(ref.abs().max())
        diff = float((ref - got).abs().max())
        out[b.path] = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return out
