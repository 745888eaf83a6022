"""Which keys of a state dict form a re-parameterisable block, by name alone (no torch).

The block types are the patterns of :mod:`..arch.blocks` (plus any a ``--blocks`` file adds),
recognised under any module path.  Each key is matched against every branch of every pattern;
at each module path the pattern that explains the most keys wins (a tie goes to the family most
other blocks of the file belong to, then to table order), nested blocks (RepMixer's mixer and
norm) are gathered into their parent, and blocks that need a context the file lacks are set
aside, named, not fused.  Shapes are checked by :mod:`.generic`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..arch.blocks import PATTERNS, BlockPattern, Branch
from ..arch.layouts import BN_LEAVES
from ..errors import BadInput

__all__ = ["Kernel", "BN_REQUIRED", "Parts", "Grouping", "group_keys"]

Kernel = Tuple[int, int]
BN_REQUIRED = ("running_mean", "running_var")
_LEAVES = {"conv": ("weight", "bias"), "bn": BN_LEAVES}


@dataclass
class Parts:
    """The keys of one block: branch name ('rbr_conv.0') -> module ('conv'/'bn') -> leaf -> key."""

    pattern: BlockPattern
    path: str
    branches: Dict[str, Dict[str, Dict[str, str]]] = field(default_factory=dict)
    spec: Dict[str, Branch] = field(default_factory=dict)  # branch name -> its Branch
    index: Dict[str, int] = field(default_factory=dict)  # branch name -> n of '{n}' (or -1)
    subs: Dict[str, "Parts"] = field(default_factory=dict)  # nested blocks by branch name
    layer_scale: Optional[str] = None
    keys: List[str] = field(default_factory=list)

    def present(self, name: str) -> bool:
        """Whether branch ``name`` (a pattern's name, '{n}' included) holds what marks it."""
        if name in self.subs:
            return True
        for got, spec in self.spec.items():
            if spec.name != name:
                continue
            mods = self.branches[got]
            if spec.kind == "bn":
                if all(k in mods.get("bn", {}) for k in BN_REQUIRED):
                    return True
            elif "weight" in mods.get("conv", {}):
                return True
        return False

    def all_keys(self) -> List[str]:
        return self.keys + [k for s in self.subs.values() for k in s.all_keys()]


@dataclass
class Grouping:
    blocks: Dict[str, Parts]  # path -> parts, in key order of each block's first key
    already: List[str]  # paths that hold only a deploy conv
    left_alone: List[Tuple[str, BlockPattern, str]]  # (path, pattern, why it was not fused)


def _rx(name: str) -> str:
    return re.escape(name).replace(r"\{n\}", r"(?P<n>\d+)")


def _compile(patterns: Sequence[BlockPattern]):
    """[(regex, pattern index, branch or None, module)] over every branch leaf of every pattern."""
    out = []
    head = r"^(?:(?P<path>.*)\.)?"
    for i, p in enumerate(patterns):
        for b in p.branches:
            if b.kind == "conv_bn":
                for mod, sub in (("conv", b.conv), ("bn", b.bn)):
                    leaves = "|".join(_LEAVES[mod])
                    out.append((re.compile(f"{head}{_rx(b.name)}\\.{re.escape(sub)}"
                                           f"\\.(?P<leaf>{leaves})$"), i, b, mod))
            elif b.kind in ("bn", "conv"):
                mod = b.kind
                out.append((re.compile(f"{head}{_rx(b.name)}\\.(?P<leaf>"
                                       f"{'|'.join(_LEAVES[mod])})$"), i, b, mod))
        if p.layer_scale:
            out.append((re.compile(f"{head}{re.escape(p.layer_scale)}$"), i, None, "scale"))
    return out


def _fused_rx(patterns: Sequence[BlockPattern]):
    names = sorted({p.fused for p in patterns}, key=len, reverse=True)
    return re.compile(r"^(?:(?P<path>.*)\.)?(?:" + "|".join(map(re.escape, names))
                      + r")\.(?:weight|bias)$")


def _candidates(keys: Sequence[str], patterns: Sequence[BlockPattern]):
    """{path: {pattern index: Parts}} of every pattern any key fits."""
    found: Dict[str, Dict[int, Parts]] = {}
    compiled = _compiled(patterns)
    for key in keys:
        for rx, i, b, mod in compiled:
            m = rx.match(key)
            if not m:
                continue
            path = m.group("path") or ""
            parts = found.setdefault(path, {}).setdefault(i, Parts(patterns[i], path))
            parts.keys.append(key)
            if b is None:
                parts.layer_scale = key
                continue
            n = m.groupdict().get("n")
            name = b.name.replace("{n}", n) if n is not None else b.name
            parts.spec[name] = b
            parts.index[name] = int(n) if n is not None else -1
            parts.branches.setdefault(name, {}).setdefault(mod, {})[m.group("leaf")] = key
    return found


_COMPILED: Dict[tuple, list] = {}


def _compiled(patterns: Sequence[BlockPattern]):
    key = tuple(patterns)
    if key not in _COMPILED:
        _COMPILED.clear()
        _COMPILED[key] = _compile(patterns)
    return _COMPILED[key]


def _anchored(parts: Parts) -> bool:
    return any(parts.present(a) for a in parts.pattern.anchor_names())


def _choose(path: str, cands: Dict[int, Parts], votes: Counter) -> Optional[Parts]:
    """The pattern that explains most keys at ``path``; a tie goes to the file's majority family."""
    ok = [c for c in cands.values() if _anchored(c)]
    if not ok:
        return None
    best = max(len(c.keys) for c in ok)
    tied = [c for c in ok if len(c.keys) == best]
    tied.sort(key=lambda c: -votes[c.pattern.family])
    chosen = tied[0]
    where = path or "(top level)"
    for other in cands.values():
        extra = [k for k in other.keys if k not in chosen.keys]
        if other is chosen or not extra or not other.branches:
            continue
        if other.pattern.naming != chosen.pattern.naming:
            raise BadInput(f"block {where}: mixes key namings ({chosen.pattern.naming}, "
                           f"{other.pattern.naming}: {extra[0]!r}); a block uses one of them")
        raise BadInput(f"block {where}: unrecognised key {extra[0]!r} among the branches of "
                       f"a {chosen.pattern.label}")
    return chosen


def _strange(keys: Sequence[str], blocks: Dict[str, Parts]) -> None:
    """Refuse keys under a block's branch modules that fit none of its branches."""
    roots: Dict[Tuple[str, str], Parts] = {}
    for path, parts in blocks.items():
        for b in parts.pattern.branches:
            if b.kind not in ("identity", "block"):
                roots[(path, b.root)] = parts
    claimed = {k for p in blocks.values() for k in p.keys}
    for key in keys:
        if key in claimed:
            continue
        bits = key.split(".")
        for i in range(len(bits) - 1):
            parts = roots.get((".".join(bits[:i]), bits[i]))
            if parts is not None and not (parts.pattern.fused == bits[i]
                                          and len(bits) == i + 2):
                p = parts.pattern
                raise BadInput(f"block {parts.path or '(top level)'}: unrecognised key "
                               f"{key!r} among its branches (a {p.label} holds only "
                               f"{', '.join(_branch_text(b) for b in p.branches)})",
                               hint="it may be another re-parameterisable block; describe it "
                                    "with --blocks FILE.yaml. Nothing was written")


def _branch_text(b: Branch) -> str:
    if b.kind == "conv_bn":
        return f"{b.name}.{b.conv}/{b.bn}"
    return b.name or "identity"


def _nest(blocks: Dict[str, Parts], patterns: Sequence[BlockPattern], keys: Sequence[str],
          cands: Dict[str, Dict[int, Parts]]) -> None:
    """Gather nested blocks (kind 'block' branches) into their parent block."""
    for i, p in enumerate(patterns):
        nested = [b for b in p.branches if b.kind == "block"]
        if not nested:
            continue
        parents: Dict[str, Dict[str, Parts]] = {}
        for path, parts in blocks.items():
            parent, _, last = path.rpartition(".")
            for b in nested:
                if last == b.name and parts.pattern.block == b.of \
                        and parts.pattern.naming == p.naming:
                    parents.setdefault(parent, {})[b.name] = parts
        for parent, subs in parents.items():
            if not all(r in subs for r in p.required):
                continue
            top = Parts(p, parent, subs=dict(subs))
            scale = cands.get(parent, {}).get(i)
            if scale is not None and scale.layer_scale:
                top.layer_scale = scale.layer_scale
                top.keys.append(scale.layer_scale)
            elif p.layer_scale:
                root = (f"{parent}." if parent else "") + p.layer_scale.split(".")[0]
                odd = [k for k in keys if k == root or k.startswith(root + ".")]
                if odd:
                    raise BadInput(f"block {parent or '(top level)'}: unrecognised key "
                                   f"{odd[0]!r}; a {p.label} keeps its layer scale in "
                                   f"{p.layer_scale!r}")
            for s in subs.values():
                del blocks[s.path]
            blocks[parent] = top


def group_keys(keys: Sequence[str], patterns: Sequence[BlockPattern] = PATTERNS) -> Grouping:
    """Every block the keys form, the paths already fused, and blocks set aside (and why)."""
    patterns = tuple(patterns)
    cands = _candidates(keys, patterns)
    votes: Counter = Counter()
    for by in cands.values():
        ok = [c for c in by.values() if _anchored(c)]
        if len({c.pattern.family for c in ok}) == 1:
            votes[ok[0].pattern.family] += 1
    blocks: Dict[str, Parts] = {}
    for path, by in cands.items():
        chosen = _choose(path, by, votes)
        if chosen is None:
            continue
        missing = [r for r in chosen.pattern.required if not chosen.present(r)]
        if missing:
            raise BadInput(f"block {path or '(top level)'}: a {chosen.pattern.label} without "
                           f"its {' and '.join(missing)} branch; it cannot be fused")
        blocks[path] = chosen
    _strange(keys, blocks)
    _nest(blocks, patterns, keys, cands)
    left: List[Tuple[str, BlockPattern, str]] = []
    types = {(p.pattern.block, p.pattern.naming) for p in blocks.values()}
    for path, parts in list(blocks.items()):
        ctx = parts.pattern.context
        if ctx and not any((t, parts.pattern.naming) in types for t in ctx):
            left.append((path, parts.pattern, f"a {parts.pattern.block} only inside a "
                         f"network with {' or '.join(ctx)} blocks, and this file has none"))
            del blocks[path]
    fused_rx = _fused_rx(patterns)
    fused_paths = set()
    for key in keys:
        m = fused_rx.match(key)
        if m:
            fused_paths.add(m.group("path") or "")
    for path, parts in blocks.items():
        if path in fused_paths:
            raise BadInput(f"block {path or '(top level)'}: holds both train branches and a "
                           f"fused {parts.pattern.fused}; the file was saved half-fused",
                           hint="start again from the train checkpoint")
    order = {k: i for i, k in enumerate(keys)}
    ordered = dict(sorted(blocks.items(), key=lambda kv: min(order[k]
                                                             for k in kv[1].all_keys())))
    already = sorted(p for p in fused_paths if p not in blocks)
    return Grouping(ordered, already, left)
