"""Which keys of a state dict form a MobileOne-style block, by name alone (no torch).

A block is recognised in any of the three namings of ``spec.layouts.LAYOUTS`` under any module
path; its keys are grouped by branch (:class:`_Parts`) once, and everything else about it is
read from shapes by :mod:`.generic`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..arch.layouts import BN_LEAVES, LAYOUTS, Layout
from ..errors import BadInput

__all__ = ["Kernel", "Naming", "NAMINGS", "BN_REQUIRED", "group_keys"]

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


def group_keys(keys: Sequence[str]) -> Tuple[Dict[str, _Parts], List[str], set]:
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
