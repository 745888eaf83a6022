"""``--blocks FILE.yaml``: block patterns of an in-house naming, in the shape of
:mod:`.blocks`, validated like model configs (bounded size, one line naming the field)::

    blocks:
      - family: mobileone-pytorch         # how inspect and the report group it
        block: MobileOneBlockUp           # the block type
        naming: mobileone-pytorch         # optional, default: the family
        fused: reparam_conv               # module path of the deploy conv inside the block
        branches:
          - {name: "_depthwise_blocks.{n}", kind: conv_bn, conv: _conv, bn: _bn}
          - {name: _depthwise_branch, kind: conv_bn, conv: _conv, bn: _bn, kernel: 1}
          - {name: _batch_norm_branch, kind: bn}

A branch takes ``name``, ``kind`` (conv_bn, bn, conv, identity, block), and where they apply
``conv``/``bn`` (module names inside a conv_bn branch, default conv and bn), ``kernel`` (the only
kernel size allowed), ``sign`` (1 or -1), ``scaled`` (times the block's ``layer_scale``) and
``of`` (the nested block type of a 'block' branch).  A block may also name ``required`` and
``anchors`` (branch names), ``layer_scale`` (a key inside the block) and ``context`` (block types
the file must also hold).  This module never imports torch.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

from ..rules.limits import MAX_KERNEL
from .blocks import BRANCH_KINDS, PATTERNS, BlockPattern, Branch
from .config import _read_yaml
from .fields import Fields, join, quote

__all__ = ["blocks_from_text", "parse_blocks", "MAX_PATTERNS", "MAX_BRANCHES_PER_BLOCK"]

MAX_PATTERNS = 64
MAX_BRANCHES_PER_BLOCK = 16
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|\{n\}")
BLOCK_KEYS = ("family", "block", "naming", "fused", "branches", "required", "anchors",
              "layer_scale", "context")
BRANCH_KEYS = ("name", "kind", "conv", "bn", "kernel", "sign", "scaled", "of")


def blocks_from_text(text: str, path: str) -> Tuple[BlockPattern, ...]:
    """The patterns of the YAML ``text`` read from ``path`` (named in every message);
    :func:`mobileone_cli.io.blocksfile.load_blocks` reads the file."""
    return parse_blocks(_read_yaml(text, path), where=path)


MAX_NAME = 200  # characters of one name or module path


def _text(f: Fields, value: Any, field: str) -> str:
    """Non-empty text kept whole (a name is used, not just shown: never shortened)."""
    if not isinstance(value, str) or not value.strip():
        raise f.fail(field, f"must be non-empty text, not {quote(value)}")
    if len(value.strip()) > MAX_NAME:
        raise f.fail(field, f"is {len(value.strip()):,} characters; at most {MAX_NAME}")
    return value.strip()


def _path(f: Fields, value: Any, field: str, *, index: bool = False,
          empty: bool = False) -> str:
    if empty and value in (None, ""):
        return ""
    text = _text(f, value, field)
    parts = text.split(".")
    if not all(_MODULE.fullmatch(p) for p in parts) or (not index and "{n}" in parts) \
            or parts.count("{n}") > 1:
        raise f.fail(field, f"{quote(text)} is not a module path (names of letters, digits "
                            f"and _ joined by dots" + (", one {n} for an index)" if index
                                                        else ")"))
    return text


def _branch(f: Fields, value: Any, field: str) -> Branch:
    m = f.mapping(value, field)
    f.known(m, field, BRANCH_KEYS)
    kind = _text(f, m.get("kind"), join(field, "kind"))
    if kind not in BRANCH_KINDS:
        raise f.fail(join(field, "kind"), f"{quote(kind)} is not one of "
                                          f"{', '.join(BRANCH_KINDS)}")
    name = _path(f, m.get("name", ""), join(field, "name"), index=kind != "block",
                 empty=kind == "identity")
    if kind != "identity" and not name:
        raise f.fail(join(field, "name"), "a branch other than the identity needs a name")
    for key in ("conv", "bn"):
        if key in m and kind != "conv_bn":
            raise f.fail(join(field, key), f"only a conv_bn branch has a {key} module")
    kw: Dict[str, Any] = {}
    for key in ("conv", "bn"):
        if key in m:
            kw[key] = _path(f, m[key], join(field, key))
    if "kernel" in m:
        if kind != "conv_bn":
            raise f.fail(join(field, "kernel"), "only a conv_bn branch has a fixed kernel")
        k = f.integer(m["kernel"], join(field, "kernel"), 1)
        if k > MAX_KERNEL or k % 2 == 0:
            raise f.fail(join(field, "kernel"), f"must be odd and at most {MAX_KERNEL}, not {k}")
        kw["kernel"] = k
    if "sign" in m:
        if m["sign"] not in (1, -1) or isinstance(m["sign"], bool):
            raise f.fail(join(field, "sign"), f"must be 1 or -1, not {quote(m['sign'])}")
        kw["sign"] = int(m["sign"])
    if "scaled" in m:
        if not isinstance(m["scaled"], bool):
            raise f.fail(join(field, "scaled"), f"must be true or false, not "
                                                f"{quote(m['scaled'])}")
        kw["scaled"] = m["scaled"]
    if kind == "block":
        kw["of"] = _text(f, m.get("of"), join(field, "of"))
    elif "of" in m:
        raise f.fail(join(field, "of"), "only a 'block' branch names a nested block type")
    return Branch(name, kind, **kw)


def _names(f: Fields, value: Any, field: str, allowed: List[str]) -> Tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_BRANCHES_PER_BLOCK:
        raise f.fail(field, f"must be a list of at most {MAX_BRANCHES_PER_BLOCK} names")
    out = []
    for i, v in enumerate(value):
        name = _text(f, v, f"{field}[{i}]")
        if allowed and name not in allowed:
            raise f.fail(f"{field}[{i}]", f"{quote(name)} is not one of its branches "
                                          f"({', '.join(allowed)})")
        out.append(name)
    return tuple(out)


def _pattern(f: Fields, value: Any, field: str) -> BlockPattern:
    m = f.mapping(value, field)
    f.known(m, field, BLOCK_KEYS)
    for key in ("family", "block", "fused", "branches"):
        if key not in m:
            raise f.fail(field, f"needs {key!r}")
    family = _text(f, m["family"], join(field, "family"))
    block = _text(f, m["block"], join(field, "block"))
    naming = _text(f, m.get("naming", family), join(field, "naming"))
    fused = _path(f, m["fused"], join(field, "fused"))
    raw = m["branches"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BRANCHES_PER_BLOCK:
        raise f.fail(join(field, "branches"), f"must be a list of 1 to "
                                              f"{MAX_BRANCHES_PER_BLOCK} branches")
    branches = tuple(_branch(f, b, f"{join(field, 'branches')}[{i}]") for i, b in enumerate(raw))
    names = [b.name for b in branches if b.name]
    if len(set(names)) != len(names):
        raise f.fail(join(field, "branches"), "two branches share a name")
    if all(b.kind == "identity" for b in branches):
        raise f.fail(join(field, "branches"), "a block needs a branch with tensors")
    scale = _text(f, m["layer_scale"], join(field, "layer_scale")) if "layer_scale" in m else ""
    if scale:
        _path(f, scale, join(field, "layer_scale"))
    return BlockPattern(family, block, naming, branches, fused,
                        required=_names(f, m.get("required"), join(field, "required"), names),
                        anchors=_names(f, m.get("anchors"), join(field, "anchors"), names),
                        layer_scale=scale,
                        context=_names(f, m.get("context"), join(field, "context"), []))


def parse_blocks(data: Any, *, where: str = "blocks file") -> Tuple[BlockPattern, ...]:
    """Patterns from parsed YAML ({'blocks': [...]}), checked field by field."""
    f = Fields(where)
    m = f.mapping(data if data is not None else {}, "(top level)")
    f.known(m, "(top level)", ("blocks",))
    raw = m.get("blocks")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_PATTERNS:
        raise f.fail("blocks", f"must be a list of 1 to {MAX_PATTERNS} block patterns")
    patterns = tuple(_pattern(f, p, f"blocks[{i}]") for i, p in enumerate(raw))
    known = {(p.block, p.naming) for p in patterns + PATTERNS}
    for i, p in enumerate(patterns):
        for j, b in enumerate(p.branches):
            if b.kind == "block" and (b.of, p.naming) not in known:
                raise f.fail(f"blocks[{i}].branches[{j}].of", f"no block type {quote(b.of)} "
                                                              f"with naming {quote(p.naming)}")
    return patterns
