"""Structural re-parameterization of MobileOne blocks, as pure functions on tensors.

For a branch "conv W, then BatchNorm (gamma, beta, mu, sigma^2)" in eval mode:

    t  = gamma / sqrt(sigma^2 + eps)
    W' = W * t          (per output channel)
    b' = beta - mu * t

The 1x1 scale branch is zero-padded to KxK at the centre and the identity BatchNorm uses an identity
kernel; the block's deploy conv is the sum of all W' and b' (paper, section 3.1).  Arithmetic is in
float64 and rounded once, to the requested dtype, at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, MutableMapping, Optional, Sequence, Tuple, Union

import torch

from ..arch.layouts import get_layout
from ..arch.specs import ArchSpec, BlockSpec
from ..errors import BadInput
from ..platform import release_freed_heap
from ..rules.limits import DEFAULT_EPS

__all__ = ["BatchNormStats", "bn_scale_shift", "fuse_branches", "fuse_block", "fuse_state_dict",
           "DEFAULT_EPS"]

KernelSize = Union[int, Tuple[int, int]]


@dataclass
class BatchNormStats:
    """The four tensors of a BatchNorm in eval mode (gamma/beta may be absent: affine=False)."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None


def _pair(k: KernelSize) -> Tuple[int, int]:
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


def bn_scale_shift(bn: BatchNormStats, eps: float = DEFAULT_EPS,
                   where: str = "") -> Tuple[torch.Tensor, torch.Tensor]:
    """(t, b') of an eval-mode BatchNorm in float64: BN(y) = t * y + b' per channel."""
    var = bn.running_var.to(torch.float64)
    if bool(torch.any(var < 0)):
        raise BadInput(f"{where or 'a BatchNorm'}: running_var has negative entries "
                       f"(min {float(var.min()):.3g}); a variance cannot be negative")
    std = torch.sqrt(var + eps)
    if not bool(torch.all(std > 0)):
        raise BadInput(f"{where or 'a BatchNorm'}: running_var + eps <= 0, the BatchNorm is "
                       f"singular (eps={eps:g})")
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros_like(std)
    t = gamma / std
    return t, beta - bn.running_mean.to(torch.float64) * t


def _pad_to(kernel: torch.Tensor, kernel_size: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad a smaller odd kernel to ``kernel_size``, centred (exact for padding = K // 2)."""
    kh, kw = kernel_size
    h, w = kernel.shape[-2:]
    if (h, w) == (kh, kw):
        return kernel
    ph, pw = (kh - h) // 2, (kw - w) // 2
    return torch.nn.functional.pad(kernel, [pw, kw - w - pw, ph, kh - h - ph])


# Output channels are fused in slices of about this many kernel elements, so the float64 working
# set of even the largest block (s4 stage4.1, 2048 x 2048) stays a few MiB.
CHUNK_ELEMENTS = 1 << 18


def fuse_branches(convs: Sequence[Tuple[torch.Tensor, BatchNormStats]],
                  scale: Optional[Tuple[torch.Tensor, BatchNormStats]],
                  identity: Optional[BatchNormStats],
                  *, kernel_size: KernelSize, groups: int, in_channels: int,
                  eps: float = DEFAULT_EPS, where: str = "",
                  dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum of all branches of one block as a single (kernel, bias).

    ``convs`` are the k conv+BN branches, ``scale`` the 1x1 conv+BN branch and ``identity`` the
    bare BatchNorm skip.  Any of them may be absent (FastViT's RepMixer norm has no conv branch).
    All arithmetic is float64; the result is rounded once to ``dtype`` (default: float64).
    """
    kh, kw = _pair(kernel_size)
    weighted = []  # (kernel, t) of the conv and scale branches
    shifts = []
    for n, (w, bn) in enumerate(convs):
        t, b = bn_scale_shift(bn, eps, f"{where} conv branch {n}")
        weighted.append((w, t))
        shifts.append(b)
    if scale is not None:
        t, b = bn_scale_shift(scale[1], eps, f"{where} scale branch")
        weighted.append((scale[0], t))
        shifts.append(b)
    t_id = None
    if identity is not None:
        t_id, b = bn_scale_shift(identity, eps, f"{where} identity branch")
        shifts.append(b)
    if not shifts:
        raise BadInput(f"{where}: a block without any branch cannot be fused")
    out_channels = shifts[0].shape[0]
    per_group = in_channels // groups
    bias = shifts[0].clone()
    for b in shifts[1:]:
        bias += b
    out_dtype = dtype or torch.float64
    kernel = torch.empty(out_channels, per_group, kh, kw, dtype=out_dtype)
    rows = max(1, CHUNK_ELEMENTS // max(1, per_group * kh * kw))
    for lo in range(0, out_channels, rows):
        hi = min(out_channels, lo + rows)
        acc = torch.zeros(hi - lo, per_group, kh, kw, dtype=torch.float64)
        for w, t in weighted:
            part = _pad_to(w[lo:hi].to(torch.float64), (kh, kw))
            acc.addcmul_(part, t[lo:hi].reshape(-1, 1, 1, 1))
        if t_id is not None:
            idx = torch.arange(lo, hi)
            acc[idx - lo, idx % per_group, kh // 2, kw // 2] += t_id[lo:hi]
        kernel[lo:hi] = acc
    return kernel, bias.to(out_dtype)


def _bn_from(sd: MutableMapping[str, torch.Tensor], prefix: str, pop: bool) -> BatchNormStats:
    get = sd.pop if pop else sd.__getitem__
    stats = BatchNormStats(running_mean=get(prefix + "running_mean"),
                           running_var=get(prefix + "running_var"),
                           weight=get(prefix + "weight"), bias=get(prefix + "bias"))
    if pop:
        sd.pop(prefix + "num_batches_tracked", None)
    return stats


def fuse_block(sd: MutableMapping[str, torch.Tensor], block: BlockSpec, *, eps: float = DEFAULT_EPS,
               dtype: Optional[torch.dtype] = None, layout: str = "apple",
               consume: bool = False) -> Dict[str, torch.Tensor]:
    """Deploy tensors of one block, read from a train-form state dict in ``layout``.

    With ``consume`` the block's train tensors are removed from ``sd`` as they are read, so a
    whole-network conversion never holds two full copies of the weights.
    """
    lay = get_layout(layout)
    path = lay.block_path(block)
    get = sd.pop if consume else sd.__getitem__
    convs = []
    for n in range(block.conv_branches):
        w = get(f"{path}.{lay.part('conv', n)}.weight")
        convs.append((w, _bn_from(sd, f"{path}.{lay.part('conv_bn', n)}.", consume)))
    scale = None
    if block.has_scale:
        w = get(f"{path}.{lay.part('scale')}.weight")
        scale = (w, _bn_from(sd, f"{path}.{lay.part('scale_bn')}.", consume))
    identity = _bn_from(sd, f"{path}.{lay.part('skip')}.", consume) if block.has_identity else None
    out_dtype = dtype or (convs[0][0].dtype if convs else scale[0].dtype if scale else
                          torch.float32)
    kernel, bias = fuse_branches(convs, scale, identity, kernel_size=block.kernel_size,
                                 groups=block.groups, in_channels=block.in_channels, eps=eps,
                                 where=block.name, dtype=out_dtype)
    out: Dict[str, torch.Tensor] = {}
    if block.has_se:
        for part in ("se_reduce", "se_expand"):
            for leaf in ("weight", "bias"):
                key = f"{path}.{lay.part(part)}.{leaf}"
                t = get(key)
                out[key] = t if dtype is None or t.dtype == dtype else t.to(dtype)
    out[f"{path}.{lay.part('reparam')}.weight"] = kernel
    out[f"{path}.{lay.part('reparam')}.bias"] = bias
    return out


def fuse_state_dict(state_dict: MutableMapping[str, torch.Tensor], arch: ArchSpec, *,
                    eps: float = DEFAULT_EPS, dtype: Optional[torch.dtype] = None,
                    layout: str = "apple", consume: bool = False) -> Dict[str, torch.Tensor]:
    """Train-form state dict -> deploy-form state dict of the same layout; no module is built.

    ``dtype`` defaults to each block's source dtype.  The head (and only the head) passes through.
    """
    lay = get_layout(layout)
    out: Dict[str, torch.Tensor] = {}
    for block in arch.block_specs():
        out.update(fuse_block(state_dict, block, eps=eps, dtype=dtype, layout=layout,
                              consume=consume))
        if consume:  # the block's train tensors are gone: give their pages back
            release_freed_heap()
    if arch.has_head:
        get = state_dict.pop if consume else state_dict.__getitem__
        for leaf in ("weight", "bias"):
            t = get(f"{lay.head}.{leaf}")
            out[f"{lay.head}.{leaf}"] = t if dtype is None or t.dtype == dtype else t.to(dtype)
    return out

