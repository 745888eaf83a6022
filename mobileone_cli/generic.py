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
naming) takes the place of its first train key.  :func:`find_blocks` needs no torch.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from .detect import FLOAT_DTYPES, TensorInfo, tensor_info
from .errors import BadInput, VerificationFailed
from .layouts import BN_LEAVES, LAYOUTS, Layout

__all__ = ["Naming", "NAMINGS", "FoundBlock", "GenericReport", "GenericResult", "find_blocks",
           "fuse_generic", "check_blocks", "convert_generic_file", "parse_kernel"]

Kernel = Tuple[int, int]


@dataclass(frozen=True)
class Naming:
    """One ecosystem's module names inside a MobileOne block."""

    name: str
    conv: str  # ModuleList of conv branches
    conv_sub: str  # the conv inside one branch
    conv_bn: str  # the BatchNorm inside one branch
    scale: str
    scale_sub: str
    scale_bn: str
    skip: str  # the identity BatchNorm
    reparam: str  # the fused conv

    @property
    def roots(self) -> Tuple[str, ...]:
        return (self.conv, self.scale, self.skip)


def _naming(lay: Layout) -> Naming:
    conv, _, conv_sub = lay.part("conv", 0).split(".")
    conv_bn = lay.part("conv_bn", 0).split(".")[2]
    scale, scale_sub = lay.part("scale").split(".")
    return Naming(lay.name, conv, conv_sub, conv_bn, scale, scale_sub,
                  lay.part("scale_bn").split(".")[1], lay.part("skip"), lay.part("reparam"))


NAMINGS: Dict[str, Naming] = {name: _naming(lay) for name, lay in LAYOUTS.items()}
_ROOTS = sorted({r for n in NAMINGS.values() for r in n.roots + (n.reparam,)}, key=len,
                reverse=True)
# Greedy path: a key is attributed to the LAST branch-module name in it.
_KEY = re.compile(r"^(?:(?P<path>.*)\.)?(?P<root>" + "|".join(map(re.escape, _ROOTS))
                  + r")\.(?P<rest>.+)$")
BN_REQUIRED = ("running_mean", "running_var")


@dataclass
class _Parts:
    """The keys of one block, sorted by branch: {'weight': key, ...} per module."""

    naming: Naming
    convs: Dict[int, Dict[str, Dict[str, str]]] = field(default_factory=dict)  # n -> conv/bn
    scale: Dict[str, Dict[str, str]] = field(default_factory=dict)  # 'conv'/'bn' -> leaf -> key
    skip: Dict[str, str] = field(default_factory=dict)
    keys: List[str] = field(default_factory=list)


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


@dataclass
class GenericReport:
    blocks: List[FoundBlock]
    keys_in: int
    keys_out: int = 0
    passthrough: int = 0  # keys copied unchanged
    already_fused: List[str] = field(default_factory=list)  # paths that hold only a fused conv


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


def _classify(naming: Naming, root: str, rest: str) -> Optional[Tuple[str, int, str, str]]:
    """(branch, n, module, leaf) for a key that fits ``naming`` exactly, else None."""
    parts = rest.split(".")
    if root == naming.conv and len(parts) == 3 and parts[0].isdigit():
        n, sub, leaf = int(parts[0]), parts[1], parts[2]
        if sub == naming.conv_sub and leaf in ("weight", "bias"):
            return "conv", n, "conv", leaf
        if sub == naming.conv_bn and leaf in BN_LEAVES:
            return "conv", n, "bn", leaf
    if root == naming.scale and len(parts) == 2:
        sub, leaf = parts
        if sub == naming.scale_sub and leaf in ("weight", "bias"):
            return "scale", 0, "conv", leaf
        if sub == naming.scale_bn and leaf in BN_LEAVES:
            return "scale", 0, "bn", leaf
    if root == naming.skip and len(parts) == 1 and parts[0] in BN_LEAVES:
        return "skip", 0, "bn", parts[0]
    return None


def _group_keys(keys: Sequence[str]) -> Tuple[Dict[str, _Parts], List[str], set]:
    """({path: parts} of recognised blocks, loose keys per path, paths holding a fused conv)."""
    found: Dict[str, Dict[str, _Parts]] = {}
    loose: Dict[str, List[Tuple[str, str]]] = {}  # path -> [(root, key)] that fit no naming
    fused_paths = set()
    for key in keys:
        m = _KEY.match(key)
        if not m:
            continue
        path, root, rest = m.group("path") or "", m.group("root"), m.group("rest")
        if any(root == n.reparam for n in NAMINGS.values()):
            if rest in ("weight", "bias"):
                fused_paths.add(path)
            continue
        hit = False
        for naming in NAMINGS.values():
            if root not in naming.roots:
                continue
            c = _classify(naming, root, rest)
            if c is None:
                continue
            hit = True
            parts = found.setdefault(path, {}).setdefault(naming.name, _Parts(naming))
            branch, n, module, leaf = c
            if branch == "conv":
                parts.convs.setdefault(n, {}).setdefault(module, {})[leaf] = key
            elif branch == "scale":
                parts.scale.setdefault(module, {})[leaf] = key
            else:
                parts.skip[leaf] = key
            parts.keys.append(key)
        if not hit:
            loose.setdefault(path, []).append((root, key))
    blocks: Dict[str, _Parts] = {}
    for path, by_naming in found.items():
        where = path or "(top level)"
        if len(by_naming) > 1:
            raise BadInput(f"block {where}: mixes key namings ({', '.join(sorted(by_naming))}); "
                           f"a block uses one of them")
        parts = next(iter(by_naming.values()))
        if not parts.convs and not parts.scale and not all(k in parts.skip for k in BN_REQUIRED):
            continue  # e.g. a Linear called 'identity': no BatchNorm, no block; passed through
        strange = [k for root, k in loose.get(path, []) if root in parts.naming.roots]
        if strange:
            raise BadInput(f"block {where}: unrecognised key {strange[0]!r} among its branches "
                           f"(a {parts.naming.name}-named MobileOne block holds only "
                           f"{parts.naming.conv}.N.{parts.naming.conv_sub}/"
                           f"{parts.naming.conv_bn}, {parts.naming.scale}.*, "
                           f"{parts.naming.skip}.*)",
                           hint="it may be another re-parameterisable block (RepVGG?); "
                                "it was not fused, and nothing was written")
        if path in fused_paths:
            raise BadInput(f"block {where}: holds both train branches and a fused "
                           f"{parts.naming.reparam}; the file was saved half-fused",
                           hint="start again from the train checkpoint")
        blocks[path] = parts
    already = sorted(p for p in fused_paths if p not in blocks)
    return blocks, already, fused_paths


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
            "train_keys": tuple(parts.keys), "first": parts.keys[0],
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
    parts, already, _ = _group_keys(keys)
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


def fuse_generic(state_dict: Mapping[str, Any], *, eps: float = 1e-5,
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
    parts, _, _ = _group_keys(list(info))
    fused: Dict[str, Tuple[Any, Any]] = {}
    for b in blocks:
        fused[b.path] = _fuse_one(state_dict, b, parts[b.path], eps)
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


def check_blocks(state_dict: Mapping[str, Any], fused: Mapping[str, Any],
                 blocks: Sequence[FoundBlock], *, eps: float = 1e-5, seed: int = 0
                 ) -> Dict[str, float]:
    """{path: max |train - fused| / max |train|} per block, on seeded random inputs.

    The reference runs the branches as they are (each conv with its own padding, then
    F.batch_norm in eval mode; the identity as a bare BatchNorm) in float64: it shares no code
    with the fusion.
    """
    import torch
    import torch.nn.functional as F

    parts, _, _ = _group_keys(list(state_dict))
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    out: Dict[str, float] = {}
    for b in blocks:
        p = parts[b.path]
        groups = b.groups or 1
        cin = groups * b.in_per_group
        kh, kw = b.kernel_size
        x = torch.randn(2, cin, 2 * kh + 3, 2 * kw + 3, generator=g, dtype=f64)

        def bn(y, leaves):
            t = {k: state_dict[v].to(f64) for k, v in leaves.items()
                 if k != "num_batches_tracked"}
            return F.batch_norm(y, t["running_mean"], t["running_var"], t.get("weight"),
                                t.get("bias"), training=False, eps=eps)

        def conv(mod, pad):
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


def _default_rtol(fused: Mapping[str, Any], blocks: Sequence[FoundBlock]) -> float:
    """1e-4 (verify's default) for float32/64; a few rounding steps of half-precision kernels."""
    import torch

    eps = max(torch.finfo(fused[b.weight_key].dtype).eps for b in blocks)
    return max(1e-4, 4 * eps)


@dataclass
class GenericResult:
    src: str
    dst: Optional[str]
    report: GenericReport
    checks: Dict[str, float] = field(default_factory=dict)  # path -> max rel diff
    size_in: int = 0
    size_out: int = 0
    notes: List[str] = field(default_factory=list)
    state_dict: Optional[Dict[str, Any]] = None

    @property
    def max_rel(self) -> Optional[float]:
        return max(self.checks.values()) if self.checks else None


def convert_generic_file(src: str, dst: Optional[str], *, eps: float = 1e-5, force: bool = False,
                         verify: bool = True, groups: Optional[int] = None,
                         norm_kernel: Optional[Kernel] = None, ema: bool = False,
                         trust: bool = False, rtol: Optional[float] = None,
                         seed: int = 0) -> GenericResult:
    """``convert --generic``: fuse every MobileOne-style block of any checkpoint file.

    Keys keep their names (a ``module.``/``model.`` prefix stripped on loading is put back), an
    mmpretrain/FastViT ``{'state_dict': ...}`` wrapper keeps its ``meta``; nothing is written
    when a block is refused or fails its check.
    """
    from . import __version__
    from .checkpoint import check_destination, load_checkpoint, output_format, save_checkpoint

    if dst is not None:
        check_destination(dst, force=force, src=src)
    ck = load_checkpoint(src, ema=ema, trust=trust)
    try:
        out, report = fuse_generic(ck.state_dict, eps=eps, groups=groups,
                                   norm_kernel=norm_kernel)
    except BadInput as exc:
        raise BadInput(f"{src}: {exc.message}", hint=exc.hint) from None
    result = GenericResult(src=src, dst=dst, report=report, size_in=os.path.getsize(src))
    if verify:
        result.checks = check_blocks(ck.state_dict, out, report.blocks, eps=eps, seed=seed)
        tol = _default_rtol(out, report.blocks) if rtol is None else rtol
        bad = [(p, r) for p, r in result.checks.items() if not r <= tol]
        if bad:
            path, rel = max(bad, key=lambda pr: pr[1])
            raise VerificationFailed(f"{src}: fused block {path or '(top level)'} differs from its "
                                     f"branches (max rel diff {rel:.3g} > {tol:g}); nothing was "
                                     f"written")
    if ck.stripped_prefix:
        out = {ck.stripped_prefix + k: v for k, v in out.items()}
        result.notes.append(f"kept the key prefix {ck.stripped_prefix!r}")
    if ck.wrapper:
        result.notes.append(f"state dict taken from the {ck.wrapper!r} entry")
    if ck.stubbed:
        result.notes.append(f"loaded without running code: {len(ck.stubbed)} foreign global(s) "
                            f"read as inert placeholders")
    if ck.trusted:
        result.notes.append("--trust-file: the file was unpickled with weights_only=False")
    if report.already_fused:
        result.notes.append(f"{len(report.already_fused)} block(s) were already fused and passed "
                            f"through")
    if dst is not None:
        container = None
        if ck.wrapper == "state_dict" and output_format(dst) != "safetensors":
            from .safeload import plain_data

            # Placeholders (foreign objects never loaded) become strings: output stays weights-only.
            meta = ck.extras.get("meta")
            container = {"meta": plain_data(dict(meta))} if isinstance(meta, dict) else {}
        metadata = dict(ck.metadata)
        metadata.update({"format": "pt", "mobileone_cli": __version__, "form": "deploy",
                         "fused_blocks": str(len(report.blocks)), "bn_eps": repr(eps)})
        result.size_out = save_checkpoint(
            dst, out, force=force, container=container,
            metadata=metadata if output_format(dst) == "safetensors" else None)
    result.state_dict = out
    return result
