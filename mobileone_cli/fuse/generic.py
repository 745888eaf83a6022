"""Fuse MobileOne-style blocks found anywhere in a state dict (FastViT, MobileCLIP, custom nets).

A block is recognised by key names alone, in any of the three namings of ``layouts.LAYOUTS``
(Apple/FastViT ``rbr_conv``/``rbr_scale``/``rbr_skip``, timm ``conv_kxk``/``conv_scale``/
``identity``, mmpretrain ``branch_conv_list``/``branch_scale``/``branch_norm``), under any module
path.  Everything else about it is read from tensor shapes:

* out channels, ``in/groups`` and kernel (kh, kw) from the conv branch weights
  (``out, in/groups, kh, kw``); the 1x1 scale branch and the BatchNorms must agree with them.
* groups only matter for the identity branch.  With an identity BatchNorm of C channels the block
  maps C -> C, so groups = C / weight.shape[1] exactly.  Without one, groups never enter the fused
  tensors (each branch is scaled per output channel and zero-padded): the fused kernel keeps the
  branch weights' shape and the deploy conv takes the train conv's groups.  So a grouped 1x1 conv
  without identity needs no groups at all.
* A block with no conv branch (FastViT's and MobileCLIP's RepMixer ``norm``: an identity BatchNorm
  only) holds neither a kernel size nor groups.  Groups: depthwise (C), as those networks build
  it, unless ``groups`` says otherwise.  Kernel: ``norm_kernel`` if given, else the kernel of the
  sibling block under the same parent module with the same channel count (RepMixer's ``mixer``),
  else 1x1.  Siblings that disagree make the block ambiguous: it is refused.
* Every branch is assumed to use padding K // 2 (per axis), which is what makes the zero-padding
  of the 1x1 and identity branches exact; kernels with an even side cannot hold a centred 1x1 and
  are refused when such a branch exists.

Every key that is not a branch of a recognised block passes through as the same tensor object, in
its original position; each block's fused ``reparam_conv`` (``branch_reparam`` for mmpretrain
naming) takes the place of its first train key.  This module finds the blocks from keys and
shapes (no torch); :mod:`.generic_fuse` fuses and checks them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import BadInput
from ..io.detect import TensorInfo
from ..rules.dtypes import FLOAT_DTYPES
from .generic_keys import BN_REQUIRED, NAMINGS, Kernel, Naming, _Parts, group_keys

__all__ = ["Naming", "NAMINGS", "FoundBlock", "find_blocks", "parse_kernel", "Kernel"]

@dataclass(frozen=True)
class FoundBlock:
    """One MobileOne-style block, as far as its tensors (and the stated rules) tell."""

    path: str  # module path ('' for a state dict of one bare block)
    naming: str  # 'apple', 'timm' or 'mmpretrain'
    conv_branches: int
    has_scale: bool
    has_identity: bool
    out_channels: int
    in_per_group: int  # weight.shape[1]
    kernel_size: Kernel
    groups: Optional[int]  # None: not fixed by the tensors and not needed (no identity branch)
    kernel_from: str  # 'weights', 'sibling <path>', '--norm-kernel', 'default 1x1'
    groups_from: str  # 'identity BN', 'depthwise default', '--groups', 'not needed'
    train_keys: Tuple[str, ...]
    weight_key: str  # the fused conv's keys in the output
    bias_key: str
    # Its keys by branch; find_blocks always passes them (the default only orders the fields).
    parts: "_Parts" = field(compare=False, repr=False, default=None)  # type: ignore[assignment]

    @property
    def in_channels(self) -> Optional[int]:
        return None if self.groups is None else self.groups * self.in_per_group

    @property
    def kernel_text(self) -> str:
        return f"{self.kernel_size[0]}x{self.kernel_size[1]}"

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "naming": self.naming, "conv_branches": self.conv_branches,
                "scale": self.has_scale, "identity": self.has_identity,
                "kernel_size": list(self.kernel_size), "kernel_from": self.kernel_from,
                "groups": self.groups, "groups_from": self.groups_from,
                "in_channels": self.in_channels, "out_channels": self.out_channels,
                "weight_key": self.weight_key}


def parse_kernel(text: Optional[str]) -> Optional[Kernel]:
    """'3' -> (3, 3); '1x11' or '1,11' -> (1, 11); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", str(text))
    if not m:
        raise BadInput(f"--norm-kernel: expected K or HxW (e.g. 3 or 1x11), not {text!r}")
    kh = int(m.group(1))
    kw = int(m.group(2)) if m.group(2) else kh
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise BadInput(f"--norm-kernel: each side must be odd and >= 1, not {kh}x{kw}")
    return kh, kw


def _bn_size(info: Mapping[str, TensorInfo], bn: Dict[str, str], what: str) -> int:
    missing = [leaf for leaf in BN_REQUIRED if leaf not in bn]
    if missing:
        raise BadInput(f"{what}: BatchNorm without {' and '.join(missing)} (no running "
                       f"statistics, so it cannot be folded)")
    sizes = set()
    for leaf, key in bn.items():
        dtype, shape = info[key]
        if leaf == "num_batches_tracked":
            continue
        if len(shape) != 1:
            raise BadInput(f"{what}: {key} has shape {list(shape)}; a BatchNorm tensor is 1-d")
        if dtype not in FLOAT_DTYPES:
            raise BadInput(f"{what}: {key} is {dtype}, expected a floating-point tensor")
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise BadInput(f"{what}: BatchNorm tensors disagree in size ({sorted(sizes)})")
    return sizes.pop()


def _conv_shape(info: Mapping[str, TensorInfo], conv: Dict[str, str], what: str
                ) -> Tuple[int, ...]:
    if "weight" not in conv:
        raise BadInput(f"{what}: conv without a weight")
    dtype, shape = info[conv["weight"]]
    if len(shape) != 4 or min(shape) < 1:
        raise BadInput(f"{what}: {conv['weight']} has shape {list(shape)}; expected a 4-d "
                       f"conv kernel (out, in/groups, kh, kw)")
    if dtype not in FLOAT_DTYPES:
        raise BadInput(f"{what}: {conv['weight']} is {dtype}, expected a floating-point tensor")
    if "bias" in conv and tuple(info[conv["bias"]][1]) != (shape[0],):
        raise BadInput(f"{what}: {conv['bias']} has shape {list(info[conv['bias']][1])}, "
                       f"expected [{shape[0]}]")
    return tuple(shape)


def _describe(path: str, parts: _Parts, info: Mapping[str, TensorInfo]) -> Dict[str, Any]:
    """Shapes of one block, checked for consistency; kernel/groups may still be open."""
    where = f"block {path or '(top level)'}"
    nm = parts.naming
    n_conv = len(parts.convs)
    if sorted(parts.convs) != list(range(n_conv)):
        raise BadInput(f"{where}: conv branches are numbered {sorted(parts.convs)}; expected "
                       f"0..{n_conv - 1}")
    out = cpg = None
    kernel: Optional[Kernel] = None
    for n in range(n_conv):
        what = f"{where}: {nm.conv}.{n}"
        br = parts.convs[n]
        if "conv" not in br or "bn" not in br:
            raise BadInput(f"{what}: needs both a conv and a BatchNorm "
                           f"({nm.conv_sub}, {nm.conv_bn})")
        shape = _conv_shape(info, br["conv"], what)
        if kernel is None:
            out, cpg, kernel = shape[0], shape[1], (shape[2], shape[3])
        elif shape != (out, cpg) + kernel:
            raise BadInput(f"{what}: weight shape {list(shape)} differs from branch 0's "
                           f"{[out, cpg, kernel[0], kernel[1]]}")
        size = _bn_size(info, br["bn"], what)
        if size != out:
            raise BadInput(f"{what}: BatchNorm has {size} channels, the conv has {out} outputs")
    has_scale = bool(parts.scale)
    if has_scale:
        what = f"{where}: {nm.scale}"
        if "conv" not in parts.scale or "bn" not in parts.scale:
            raise BadInput(f"{what}: needs both a conv and a BatchNorm "
                           f"({nm.scale_sub}, {nm.scale_bn})")
        shape = _conv_shape(info, parts.scale["conv"], what)
        if shape[2:] != (1, 1):
            raise BadInput(f"{what}: the scale branch is a 1x1 conv, found "
                           f"{shape[2]}x{shape[3]}")
        if out is None:
            out, cpg = shape[0], shape[1]
        elif shape[:2] != (out, cpg):
            raise BadInput(f"{what}: weight shape {list(shape)} does not fit the conv branches "
                           f"({out} outputs, {cpg} inputs per group)")
        size = _bn_size(info, parts.scale["bn"], what)
        if size != out:
            raise BadInput(f"{what}: BatchNorm has {size} channels, the conv has {out} outputs")
    groups = None
    groups_from = "not needed"
    has_identity = bool(parts.skip)
    if has_identity:
        what = f"{where}: {nm.skip}"
        c = _bn_size(info, parts.skip, what)
        if out is None:
            out = c
        elif c != out:
            raise BadInput(f"{what}: identity BatchNorm has {c} channels but the block has {out} "
                           f"outputs; an identity branch needs in = out channels")
        if cpg is not None:
            if cpg > c or c % cpg:
                raise BadInput(f"{what}: {c} channels cannot be split into groups of {cpg} "
                               f"(weight.shape[1]); the shapes are inconsistent")
            groups, groups_from = c // cpg, "identity BN"
    if kernel is not None and (has_scale or has_identity) and (kernel[0] % 2 == 0
                                                               or kernel[1] % 2 == 0):
        raise BadInput(f"{where}: kernel {kernel[0]}x{kernel[1]} has an even side, so the "
                       f"{'scale' if has_scale else 'identity'} branch has no centre to sit at")
    prefix = f"{path}." if path else ""
    return {"path": path, "naming": nm.name, "conv_branches": n_conv, "has_scale": has_scale,
            "has_identity": has_identity, "out_channels": out, "in_per_group": cpg,
            "kernel_size": kernel, "groups": groups, "groups_from": groups_from,
            "kernel_from": "weights" if kernel is not None else "",
            "train_keys": tuple(parts.keys), "first": parts.keys[0], "parts": parts,
            "weight_key": f"{prefix}{nm.reparam}.weight", "bias_key": f"{prefix}{nm.reparam}.bias"}


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def find_blocks(info: Mapping[str, TensorInfo], *, groups: Optional[int] = None,
                norm_kernel: Optional[Kernel] = None) -> Tuple[List[FoundBlock], List[str]]:
    """(every MobileOne-style block in key order, paths that are already fused) from shapes.

    ``groups`` and ``norm_kernel`` apply only to blocks without a conv branch, whose tensors do
    not fix them (see the module docstring for every rule).  Inconsistent blocks are refused.
    """
    keys = list(info)
    parts, already, _ = group_keys(keys)
    described = [_describe(path, p, info) for path, p in parts.items()]
    by_parent: Dict[str, List[Dict[str, Any]]] = {}
    for d in described:
        by_parent.setdefault(_parent(d["path"]), []).append(d)
    for d in described:
        where = f"block {d['path'] or '(top level)'}"
        if d["kernel_size"] is None:
            d["kernel_size"], d["kernel_from"] = _open_kernel(d, by_parent, norm_kernel, where)
        if d["in_per_group"] is None:  # identity only: C -> C, groups not in the tensors
            c = d["out_channels"]
            g = groups if groups is not None else c
            if g < 1 or c % g:
                raise BadInput(f"{where}: --groups {g} does not divide its {c} channels")
            d["groups"], d["in_per_group"] = g, c // g
            d["groups_from"] = "--groups" if groups is not None else "depthwise default"
    order = {k: i for i, k in enumerate(keys)}
    described.sort(key=lambda d: order[d["first"]])
    blocks = [FoundBlock(**{k: v for k, v in d.items() if k != "first"}) for d in described]
    return blocks, already


def _open_kernel(d: Dict[str, Any], by_parent: Mapping[str, List[Dict[str, Any]]],
                 norm_kernel: Optional[Kernel], where: str) -> Tuple[Kernel, str]:
    """Kernel of a block without conv branches: --norm-kernel, a sibling's, or 1x1."""
    if norm_kernel is not None:
        return norm_kernel, "--norm-kernel"
    sibs = [s for s in by_parent.get(_parent(d["path"]), [])
            if s is not d and s["kernel_from"] == "weights"
            and s["out_channels"] == d["out_channels"]]
    kernels = sorted({s["kernel_size"] for s in sibs})
    if len(kernels) > 1:
        raise BadInput(f"{where}: has no conv branch, so its kernel size is not in its tensors, "
                       f"and its sibling blocks disagree ("
                       + ", ".join(f"{s['path']}: {s['kernel_size'][0]}x{s['kernel_size'][1]}"
                                   for s in sibs) + ")",
                       hint="choose it with --norm-kernel K (or HxW, e.g. 1x11)")
    if kernels:
        src = next(s["path"] for s in sibs if s["kernel_size"] == kernels[0])
        return kernels[0], f"sibling {src}"
    return (1, 1), "default 1x1"
