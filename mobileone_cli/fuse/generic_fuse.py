"""Fusion of the MobileOne-style blocks :mod:`.generic` finds, and a check of each block against
its own branches run in float64 (a reference that shares no code with the fusion).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import BadInput
from ..io.detect import tensor_info
from ..rules.limits import DEFAULT_EPS
from ..rules.tolerances import DEFAULT_RTOL, SENSITIVITY_FACTOR, UNIT_ROUNDOFF
from .generic import NAMINGS, FoundBlock, Kernel, _Parts, find_blocks

__all__ = ["GenericReport", "fuse_generic", "check_blocks", "block_bounds"]


@dataclass
class GenericReport:
    blocks: List[FoundBlock]
    keys_in: int
    keys_out: int = 0
    passthrough: int = 0  # keys copied unchanged
    already_fused: List[str] = field(default_factory=list)  # paths that hold only a fused conv


def _bn(sd: Mapping[str, Any], bn: Dict[str, str], conv_bias: Optional[str] = None):
    import torch

    from .fusion import BatchNormStats

    mean = sd[bn["running_mean"]].to(torch.float64)
    if conv_bias is not None:  # BN(Wx + c) is BN(Wx) with running_mean - c
        mean = mean - sd[conv_bias].to(torch.float64)
    return BatchNormStats(running_mean=mean, running_var=sd[bn["running_var"]],
                          weight=sd[bn["weight"]] if "weight" in bn else None,
                          bias=sd[bn["bias"]] if "bias" in bn else None)


def _fuse_one(sd: Mapping[str, Any], b: FoundBlock, parts: _Parts, eps: float):
    from .fusion import fuse_branches

    convs = [(sd[parts.convs[n]["conv"]["weight"]],
              _bn(sd, parts.convs[n]["bn"], parts.convs[n]["conv"].get("bias")))
             for n in range(b.conv_branches)]
    scale = ((sd[parts.scale["conv"]["weight"]],
              _bn(sd, parts.scale["bn"], parts.scale["conv"].get("bias"))) if b.has_scale else None)
    identity = _bn(sd, parts.skip) if b.has_identity else None
    groups = b.groups or 1  # without identity, any groups giving the weights' shape will do
    kernel, bias = fuse_branches(convs, scale, identity, kernel_size=b.kernel_size,
                                 groups=groups, in_channels=groups * b.in_per_group, eps=eps,
                                 where=f"block {b.path or '(top level)'}")
    src = (convs[0][0] if convs else scale[0] if scale is not None
           else sd[parts.skip["running_var"]])
    return kernel.to(src.dtype), bias.to(src.dtype)


def fuse_generic(state_dict: Mapping[str, Any], *, eps: float = DEFAULT_EPS,
                 groups: Optional[int] = None, norm_kernel: Optional[Kernel] = None
                 ) -> Tuple[Dict[str, Any], GenericReport]:
    """(new state dict, report): every block fused in float64, every other key passed through.

    The input is not modified; passed-through values are the very same tensor objects.
    """
    info = tensor_info(state_dict)
    blocks, already = find_blocks(info, groups=groups, norm_kernel=norm_kernel)
    if not blocks:
        raise BadInput(f"no MobileOne-style blocks found among {len(info)} keys "
                       f"(looked for {', '.join(n.conv for n in NAMINGS.values())} / "
                       f"{', '.join(n.skip for n in NAMINGS.values())} branches)"
                       + (f"; {len(already)} block(s) are already fused" if already else ""))
    fused: Dict[str, Tuple[Any, Any]] = {}
    for b in blocks:
        fused[b.path] = _fuse_one(state_dict, b, b.parts, eps)
    start = {b.train_keys[0]: b for b in blocks}
    consumed = {k for b in blocks for k in b.train_keys}
    out: Dict[str, Any] = {}
    for key, value in state_dict.items():
        if key in start:
            b = start[key]
            for new in (b.weight_key, b.bias_key):
                if new in state_dict or new in out:
                    raise BadInput(f"block {b.path or '(top level)'}: {new} already exists")
            out[b.weight_key], out[b.bias_key] = fused[b.path]
        elif key not in consumed:
            out[key] = value
    report = GenericReport(blocks=blocks, keys_in=len(info), keys_out=len(out),
                           passthrough=len(info) - len(consumed), already_fused=already)
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


def check_blocks(state_dict: Mapping[str, Any], fused: Mapping[str, Any],
                 blocks: Sequence[FoundBlock], *, eps: float = DEFAULT_EPS, seed: int = 0
                 ) -> Dict[str, float]:
    """{path: max |train - fused| / max |train|} per block, on seeded random inputs.

    The reference runs the branches as they are (each conv with its own padding, then
    F.batch_norm in eval mode; the identity as a bare BatchNorm) in float64: it shares no code
    with the fusion.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    out: Dict[str, float] = {}
    for b in blocks:
        p = b.parts
        groups = b.groups or 1
        kh, kw = b.kernel_size
        x = _block_input(b, g)

        def bn(y, leaves):
            t = {k: state_dict[v].to(f64) for k, v in leaves.items()
                 if k != "num_batches_tracked"}
            return F.batch_norm(y, t["running_mean"], t["running_var"], t.get("weight"),
                                t.get("bias"), training=False, eps=eps)

        def conv(mod, pad, x=x, groups=groups):
            w = state_dict[mod["weight"]].to(f64)
            bias = state_dict[mod["bias"]].to(f64) if "bias" in mod else None
            return F.conv2d(x, w, bias, padding=pad, groups=groups)

        ref = torch.zeros(())
        for n in range(b.conv_branches):
            ref = ref + bn(conv(p.convs[n]["conv"], (kh // 2, kw // 2)), p.convs[n]["bn"])
        if b.has_scale:
            ref = ref + bn(conv(p.scale["conv"], 0), p.scale["bn"])
        if b.has_identity:
            ref = ref + bn(x, p.skip)
        got = F.conv2d(x, fused[b.weight_key].to(f64), fused[b.bias_key].to(f64),
                       padding=(kh // 2, kw // 2), groups=groups)
        scale = float(ref.abs().max())
        diff = float((ref - got).abs().max())
        out[b.path] = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return out
