"""Re-parameterisable blocks found anywhere in a state dict, described from key names and
tensor shapes alone (no torch): MobileOne, FastViT/MobileCLIP, RepVGG, RepGhost, and whatever a
``--blocks`` file describes (:mod:`..arch.blocks` holds the patterns, :mod:`.generic_keys`
matches them).

Everything else about a block is read from shapes:

* out channels, ``in/groups`` and kernel (kh, kw) from its conv weights (``out, in/groups, kh,
  kw``); every conv branch and BatchNorm must agree on out channels and ``in/groups``.  The
  block's kernel is its largest; smaller odd kernels are zero-padded, centred (a 1x1 scale
  branch, RepLKNet's small kernel), exact because every branch pads K // 2 per axis.
* groups only matter for an identity (a BatchNorm on the input, or the input itself): the block
  maps C -> C, so groups = C / weight.shape[1] exactly.  Without one, groups never enter the
  fused tensors: the fused kernel keeps the branch weights' shape.
* A block with no conv branch (RepMixer's ``norm``: an identity BatchNorm only) holds neither a
  kernel size nor groups.  Groups: depthwise (C), as FastViT and MobileCLIP build it, unless
  ``groups`` says otherwise.  Kernel: ``norm_kernel`` if given, else the kernel of the sibling
  block under the same parent with the same channel count (RepMixer's ``mixer``), else 1x1.
  Siblings that disagree make the block ambiguous: it is refused.
* A block made of nested blocks (RepMixer: x + layer_scale * (mixer(x) - norm(x))) takes their
  kernel and groups, which must agree; its layer scale holds one value per channel.

Every key that is not a branch of a recognised block passes through as the same tensor object,
in its original position; each block's deploy conv takes the place of its first train key.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..arch.blocks import PATTERNS, BlockPattern
from ..errors import BadInput
from ..io.detect import TensorInfo
from ..rules.dtypes import FLOAT_DTYPES
from .generic_found import FoundBlock, FoundBranch
from .generic_keys import BN_REQUIRED, Grouping, Kernel, Parts, group_keys

__all__ = ["FoundBranch", "FoundBlock", "find_blocks", "parse_kernel", "Kernel"]


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


def _describe(parts: Parts, info: Mapping[str, TensorInfo]) -> Dict[str, Any]:
    """Shapes of one block without nested blocks, checked; kernel/groups may still be open."""
    path = parts.path
    where = f"block {path or '(top level)'}"
    pat = parts.pattern
    lists: Dict[str, List[int]] = {}
    for name, n in parts.index.items():
        if n >= 0:
            lists.setdefault(parts.spec[name].name, []).append(n)
    for base, ns in lists.items():
        if sorted(ns) != list(range(len(ns))):
            raise BadInput(f"{where}: {base.split('.')[0]} branches are numbered {sorted(ns)}; "
                           f"expected 0..{len(ns) - 1}")
    order = sorted(parts.branches, key=lambda nm: (
        [b.name for b in pat.branches].index(parts.spec[nm].name), parts.index[nm]))
    out = cpg = None
    first: Optional[Tuple[str, Tuple[int, ...]]] = None
    list_shape: Dict[str, Tuple[int, ...]] = {}
    kernels: List[Kernel] = []
    found: List[FoundBranch] = []
    centred = False
    for name in order:
        spec, mods = parts.spec[name], parts.branches[name]
        what = f"{where}: {name}"
        if spec.kind == "bn":
            centred = True
            found.append(FoundBranch(name, "bn", sign=spec.sign, scaled=spec.scaled))
            continue
        if spec.kind == "conv_bn" and ("conv" not in mods or "bn" not in mods):
            raise BadInput(f"{what}: needs both a conv and a BatchNorm ({spec.conv}, {spec.bn})")
        shape = _conv_shape(info, mods["conv"], what)
        kernel = (shape[2], shape[3])
        if spec.kernel is not None and kernel != (spec.kernel, spec.kernel):
            raise BadInput(f"{what}: the {'scale' if spec.kernel == 1 else 'fixed'} branch is a "
                           f"{spec.kernel}x{spec.kernel} conv, found {kernel[0]}x{kernel[1]}")
        if spec.name in list_shape and shape != list_shape[spec.name]:
            raise BadInput(f"{what}: weight shape {list(shape)} differs from branch 0's "
                           f"{list(list_shape[spec.name])}")
        list_shape.setdefault(spec.name, shape)
        if first is None:
            first, out, cpg = (name, shape), shape[0], shape[1]
        elif shape[:2] != (out, cpg):
            raise BadInput(f"{what}: weight shape {list(shape)} does not fit the conv branches "
                           f"({out} outputs, {cpg} inputs per group, as {first[0]})")
        if spec.kind == "conv_bn":
            size = _bn_size(info, mods["bn"], what)
            if size != out:
                raise BadInput(f"{what}: BatchNorm has {size} channels, the conv has {out} "
                               f"outputs")
        kernels.append(kernel)
        found.append(FoundBranch(name, spec.kind, kernel, spec.sign, spec.scaled,
                                 fixed=spec.kernel is not None))
    if any(b.kind == "identity" for b in pat.branches):
        found.append(FoundBranch("", "identity"))
        centred = True
    kernel = (max(k[0] for k in kernels), max(k[1] for k in kernels)) if kernels else None
    groups, groups_from = None, "not needed"
    if centred:
        for name in order:
            if parts.spec[name].kind != "bn":
                continue
            what = f"{where}: {name}"
            c = _bn_size(info, parts.branches[name].get("bn", {}), what)
            if out is None:
                out = c
            elif c != out:
                raise BadInput(f"{what}: identity BatchNorm has {c} channels but the block has "
                               f"{out} outputs; an identity branch needs in = out channels")
        if cpg is not None:
            if cpg > out or out % cpg:
                raise BadInput(f"{where}: {out} channels cannot be split into groups of {cpg} "
                               f"(weight.shape[1]); the shapes are inconsistent")
            groups = out // cpg
            groups_from = "identity BN" if any(b.kind == "bn" for b in found) else "identity"
    if kernel is not None:
        odd = centred or len(set(kernels)) > 1
        for k in set(kernels) | {kernel}:
            if odd and (k[0] % 2 == 0 or k[1] % 2 == 0):
                raise BadInput(f"{where}: kernel {k[0]}x{k[1]} has an even side, so a "
                               f"{'scale or identity' if centred else 'smaller'} branch has no "
                               f"centre to sit at")
    prefix = f"{path}." if path else ""
    return {"path": path, "family": pat.family, "block_type": pat.block, "naming": pat.naming,
            "branches": tuple(found), "out_channels": out, "in_per_group": cpg,
            "kernel_size": kernel, "groups": groups, "groups_from": groups_from,
            "kernel_from": "weights" if kernel is not None else "",
            "train_keys": tuple(parts.keys), "parts": parts,
            "weight_key": f"{prefix}{pat.fused}.weight", "bias_key": f"{prefix}{pat.fused}.bias"}


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _nested(parts: Parts, subs: Dict[str, FoundBlock], info: Mapping[str, TensorInfo]
            ) -> FoundBlock:
    """A block of nested blocks: they must agree on channels, kernel and groups."""
    where = f"block {parts.path or '(top level)'}"
    pat = parts.pattern
    inner = list(subs.values())
    shapes = {(s.out_channels, s.kernel_size) for s in inner}
    if len(shapes) != 1:
        raise BadInput(f"{where}: its nested blocks disagree in channels or kernel ("
                       + ", ".join(f"{s.path}: {s.out_channels} ch {s.kernel_text}"
                                   for s in inner) + ")")
    out, kernel = shapes.pop()
    known = [s for s in inner if s.groups is not None]
    if len({s.groups for s in known}) > 1:
        raise BadInput(f"{where}: its nested blocks disagree in groups ("
                       + ", ".join(f"{s.path}: {s.groups}" for s in known) + ")")
    cpgs = {s.in_per_group for s in inner}
    if len(cpgs) != 1:
        raise BadInput(f"{where}: its nested blocks disagree in inputs per group ({sorted(cpgs)})")
    cpg = cpgs.pop()
    groups = known[0].groups if known else out // cpg
    if groups * cpg != out:
        raise BadInput(f"{where}: {out} channels cannot be split into {groups} groups of {cpg}")
    if parts.layer_scale is not None:
        dtype, shape = info[parts.layer_scale]
        n = 1
        for d in shape:
            n *= int(d)
        if n != out or dtype not in FLOAT_DTYPES or (shape and max(shape) != n):
            raise BadInput(f"{where}: layer scale {parts.layer_scale} has shape {list(shape)} "
                           f"({dtype}); expected {out} floating-point values, one per channel")
    branches = tuple(FoundBranch("", "identity") if b.kind == "identity" else
                     FoundBranch(b.name, "block", kernel, b.sign, b.scaled)
                     for b in pat.branches if b.kind == "identity" or b.name in subs)
    prefix = f"{parts.path}." if parts.path else ""
    return FoundBlock(
        path=parts.path, family=pat.family, block_type=pat.block, naming=pat.naming,
        branches=branches, out_channels=out, in_per_group=cpg, kernel_size=kernel,
        groups=groups, kernel_from="nested", groups_from="nested",
        train_keys=tuple(parts.all_keys()), weight_key=f"{prefix}{pat.fused}.weight",
        bias_key=f"{prefix}{pat.fused}.bias", subs=tuple(inner),
        layer_scale_key=parts.layer_scale, parts=parts)


def find_blocks(info: Mapping[str, TensorInfo], *, groups: Optional[int] = None,
                norm_kernel: Optional[Kernel] = None,
                patterns: Sequence[BlockPattern] = PATTERNS
                ) -> Tuple[List[FoundBlock], List[str]]:
    """(every block in key order, paths that are already fused) from names and shapes.

    ``groups`` and ``norm_kernel`` apply only to blocks without a conv branch, whose tensors do
    not fix them (see the module docstring for every rule).  Inconsistent blocks are refused.
    """
    blocks, already, _ = find_blocks_grouped(info, groups=groups, norm_kernel=norm_kernel,
                                             patterns=patterns)
    return blocks, already


def find_blocks_grouped(info: Mapping[str, TensorInfo], *, groups: Optional[int] = None,
                        norm_kernel: Optional[Kernel] = None,
                        patterns: Sequence[BlockPattern] = PATTERNS
                        ) -> Tuple[List[FoundBlock], List[str], Grouping]:
    """:func:`find_blocks`, with the key grouping (blocks set aside, and why) as well."""
    grouping = group_keys(list(info), patterns)
    leaves = [p for top in grouping.blocks.values() for p in (list(top.subs.values())
                                                             if top.subs else [top])]
    described = [_describe(p, info) for p in leaves]
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
    found = {d["path"]: FoundBlock(**d) for d in described}
    blocks: List[FoundBlock] = []
    for path, top in grouping.blocks.items():
        if top.subs:
            blocks.append(_nested(top, {n: found[s.path] for n, s in top.subs.items()}, info))
        else:
            blocks.append(found[path])
    return blocks, grouping.already, grouping


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
