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

from .arch import ArchSpec, BlockSpec
from .errors import BadInput
from .layouts import get_layout

__all__ = ["BatchNormStats", "fuse_bn", "fuse_branches", "fuse_block", "fuse_state_dict",
           "identity_kernel", "DEFAULT_EPS"]

DEFAULT_EPS = 1e-5
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


def fuse_bn(kernel: torch.Tensor, bn: BatchNormStats, eps: float = DEFAULT_EPS,
            where: str = "") -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the conv kernel before it; float64 in, float64 out."""
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
    return kernel * t.reshape(-1, 1, 1, 1), beta - bn.running_mean.to(torch.float64) * t


def identity_kernel(channels: int, groups: int, kernel_size: KernelSize) -> torch.Tensor:
    """The KxK kernel of a grouped conv that returns its input unchanged (float64)."""
    kh, kw = _pair(kernel_size)
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=torch.float64)
    idx = torch.arange(channels)
    kernel[idx, idx % per_group, kh // 2, kw // 2] = 1.0
    return kernel


def _pad_to(kernel: torch.Tensor, kernel_size: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad a smaller odd kernel to ``kernel_size``, centred (exact for padding = K // 2)."""
    kh, kw = kernel_size
    h, w = kernel.shape[-2:]
    if (h, w) == (kh, kw):
        return kernel
    ph, pw = (kh - h) // 2, (kw - w) // 2
    return torch.nn.functional.pad(kernel, [pw, kw - w - pw, ph, kh - h - ph])


def fuse_branches(convs: Sequence[Tuple[torch.Tensor, BatchNormStats]],
                  scale: Optional[Tuple[torch.Tensor, BatchNormStats]],
                  identity: Optional[BatchNormStats],
                  *, kernel_size: KernelSize, groups: int, in_channels: int,
                  eps: float = DEFAULT_EPS, where: str = "") -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum of all branches of one block as a single (kernel, bias), in float64.

    ``convs`` are the k conv+BN branches, ``scale`` the 1x1 conv+BN branch and ``identity`` the
    bare BatchNorm skip.  Any of them may be absent (FastViT's RepMixer norm has no conv branch).
    """
    ks = _pair(kernel_size)
    kernel: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None

    def add(k: torch.Tensor, b: torch.Tensor) -> None:
        nonlocal kernel, bias
        kernel = k if kernel is None else kernel + k
        bias = b if bias is None else bias + b

    for n, (w, bn) in enumerate(convs):
        add(*fuse_bn(w.to(torch.float64), bn, eps, f"{where} conv branch {n}"))
    if scale is not None:
        w, bn = scale
        add(*fuse_bn(_pad_to(w.to(torch.float64), ks), bn, eps, f"{where} scale branch"))
    if identity is not None:
        add(*fuse_bn(identity_kernel(in_channels, groups, ks), identity, eps,
                     f"{where} identity branch"))
    if kernel is None or bias is None:
        raise BadInput(f"{where}: a block without any branch cannot be fused")
    return kernel, bias


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
                                 where=block.name)
    out: Dict[str, torch.Tensor] = {}
    if block.has_se:
        for part in ("se_reduce", "se_expand"):
            for leaf in ("weight", "bias"):
                key = f"{path}.{lay.part(part)}.{leaf}"
                t = get(key)
                out[key] = t if dtype is None or t.dtype == dtype else t.to(dtype)
    out[f"{path}.{lay.part('reparam')}.weight"] = kernel.to(out_dtype)
    out[f"{path}.{lay.part('reparam')}.bias"] = bias.to(out_dtype)
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
    if arch.has_head:
        get = state_dict.pop if consume else state_dict.__getitem__
        for leaf in ("weight", "bias"):
            t = get(f"{lay.head}.{leaf}")
            out[f"{lay.head}.{leaf}"] = t if dtype is None or t.dtype == dtype else t.to(dtype)
    return out

