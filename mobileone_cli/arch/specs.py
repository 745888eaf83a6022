"""MobileOne architectures as data.

An :class:`ArchSpec` is a handful of numbers (widths, pairs per stage, k, SE pairs); every other
module (the torch model, the fusion, the key layouts, the counters) derives the block list from it
with :meth:`ArchSpec.block_specs`.  The released s0..s4 live in ``configs/builtin.yaml``.

This module never imports torch.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["ArchSpec", "BlockSpec", "builtin_archs", "get_arch", "ARCH_NAMES",
           "canonical_arch_name",
           "match_builtin", "arch_differences", "expect_arch"]

ARCH_NAMES = ("s0", "s1", "s2", "s3", "s4")
_BUILTIN_YAML = os.path.join(os.path.dirname(__file__), "configs", "builtin.yaml")
# How the other ecosystems spell a variant: timm 'mobileone_s2', mmpretrain
# 'mobileone-s2_8xb32_in1k'
# config names, Apple 'mobileone_s2_unfused'.
_ALIAS = re.compile(r"^(?:mobileone[-_ ]?)?(s\d)(?:[-_].*)?$", re.I)


@dataclass(frozen=True)
class BlockSpec:
    """One MobileOneBlock: what the fusion and the model need to know about it."""

    name: str  # canonical (Apple) module path: 'stage0', 'stage3.17'
    stage: int  # 0 = stem, 1..N = stages
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    groups: int
    conv_branches: int
    se_channels: int  # 0 = no squeeze-excitation

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    @property
    def has_scale(self) -> bool:
        """The 1x1 scale branch exists only when the main kernel is larger than 1x1."""
        return self.kernel_size > 1

    @property
    def has_identity(self) -> bool:
        """The identity BatchNorm exists only where input and output shapes agree."""
        return self.in_channels == self.out_channels and self.stride == 1

    @property
    def has_se(self) -> bool:
        return self.se_channels > 0


@dataclass(frozen=True)
class ArchSpec:
    """A MobileOne variant. ``blocks`` counts depthwise+pointwise pairs per stage."""

    name: str
    stem_channels: int
    widths: Tuple[int, ...]
    blocks: Tuple[int, ...]
    conv_branches: Tuple[int, ...]
    se_blocks: Tuple[int, ...]
    num_classes: int = 1000
    kernel_size: int = 3
    in_channels: int = 3
    se_ratio: float = 0.0625
    stem_conv_branches: int = 1
    bn_eps: Optional[float] = None  # a config's BatchNorm eps; None: not stated (DEFAULT_EPS)

    def __post_init__(self) -> None:
        n = len(self.widths)
        for fname in ("blocks", "conv_branches", "se_blocks"):
            if len(getattr(self, fname)) != n:
                raise ValueError(f"{fname} has {len(getattr(self, fname))} entries, widths has {n}")

    @property
    def eps(self) -> float:
        """The BatchNorm eps to fuse with: the stated one, else PyTorch's default."""
        from ..rules.limits import default_eps

        return default_eps(self.bn_eps)

    @property
    def num_stages(self) -> int:
        return len(self.widths)

    @property
    def head_channels(self) -> int:
        return self.widths[-1]

    @property
    def has_head(self) -> bool:
        return self.num_classes > 0

    def with_classes(self, num_classes: int) -> "ArchSpec":
        return dataclasses.replace(self, num_classes=num_classes)

    def same_backbone(self, other: "ArchSpec", ignore_branches: bool = False) -> bool:
        """True when both specs describe the same network apart from name and head.

        ``ignore_branches`` compares deploy forms, where the number of conv branches is gone."""
        a = dataclasses.replace(self, name="", num_classes=0, bn_eps=0.0)
        b = dataclasses.replace(other, name="", num_classes=0, bn_eps=0.0)
        if ignore_branches:
            b = dataclasses.replace(b, conv_branches=a.conv_branches,
                                    stem_conv_branches=a.stem_conv_branches)
        return a == b

    def block_specs(self) -> Tuple[BlockSpec, ...]:
        return _block_specs(self)

    def to_dict(self) -> Dict[str, object]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


@functools.lru_cache(maxsize=64)
def _block_specs(arch: ArchSpec) -> Tuple[BlockSpec, ...]:
    k = arch.kernel_size
    specs = [
        BlockSpec("stage0", 0, arch.in_channels, arch.stem_channels, k, 2, 1,
                  arch.stem_conv_branches, 0)
    ]
    c_in = arch.stem_channels
    for s, (width, pairs, kbr, n_se) in enumerate(
            zip(arch.widths, arch.blocks, arch.conv_branches, arch.se_blocks), start=1):
        if n_se > pairs:
            raise ValueError(f"stage{s}: {n_se} SE pairs but only {pairs} pairs")
        for p in range(pairs):
            stride = 2 if p == 0 else 1
            use_se = p >= pairs - n_se
            se_dw = int(c_in * arch.se_ratio) if use_se else 0
            se_pw = int(width * arch.se_ratio) if use_se else 0
            # depthwise kxk, then pointwise 1x1
            specs.append(BlockSpec(f"stage{s}.{2 * p}", s, c_in, c_in, k, stride, c_in, kbr, se_dw))
            specs.append(BlockSpec(f"stage{s}.{2 * p + 1}", s, c_in, width, 1, 1, 1, kbr, se_pw))
            c_in = width
    return tuple(specs)


def _spec_from_mapping(name: str, d: Dict[str, object]) -> ArchSpec:
    fields = {f.name for f in dataclasses.fields(ArchSpec)}
    kwargs: Dict[str, Any] = {}
    for key, value in d.items():
        if key not in fields:
            raise ValueError(f"unknown field {key!r}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    kwargs["name"] = name
    return ArchSpec(**kwargs)


@functools.lru_cache(maxsize=1)
def builtin_archs() -> Dict[str, ArchSpec]:
    """The released variants, read from the YAML shipped in the package.

    The file keeps to YAML's JSON subset, so json reads it: importing a YAML parser would cost
    more start-up time than the whole fusion of s0."""
    import json

    with open(_BUILTIN_YAML, "r", encoding="utf-8") as fh:
        raw = json.loads("".join(ln for ln in fh if not ln.lstrip().startswith("#")))
    return {name: _spec_from_mapping(name, body) for name, body in raw.items()}


def canonical_arch_name(name: str) -> Optional[str]:
    """'s2' for 's2', 'S2', 'mobileone_s2' (timm), 'mobileone-s2_8xb32_in1k' (mmpretrain)."""
    m = _ALIAS.match(name.strip())
    key = m.group(1).lower() if m else name.strip().lower()
    return key if key in builtin_archs() else None


def get_arch(name: str, num_classes: Optional[int] = None) -> ArchSpec:
    """A built-in variant by name ('s0'..'s4', or timm's 'mobileone_s0'), optionally with
    another head size."""
    archs = builtin_archs()
    key = canonical_arch_name(name)
    if key is None:
        raise KeyError(f"unknown MobileOne variant {name!r}; known: {', '.join(archs)}")
    spec = archs[key]
    return spec if num_classes is None else spec.with_classes(num_classes)


def match_builtin(spec: ArchSpec) -> Optional[str]:
    """Name of the built-in variant with the same backbone as ``spec``, if any."""
    for name, known in builtin_archs().items():
        if known.same_backbone(spec):
            return name
    return None



def arch_differences(expected: ArchSpec, found: ArchSpec, *, ignore_branches: bool = False,
                     compare_head: bool = False) -> List[str]:
    """'field: expected X, checkpoint has Y' for every backbone field that differs."""
    # Every field same_backbone compares: all but the name, the head and eps.
    names = [fl.name for fl in dataclasses.fields(ArchSpec)
             if fl.name not in ("name", "num_classes", "bn_eps")]
    if ignore_branches:
        names = [n for n in names if n not in ("conv_branches", "stem_conv_branches")]
    if compare_head:
        names.append("num_classes")

    def show(v: object) -> object:
        return list(v) if isinstance(v, tuple) else v

    return [f"{n}: expected {show(getattr(expected, n))}, checkpoint has {show(getattr(found, n))}"
            for n in names if getattr(expected, n) != getattr(found, n)]


def expect_arch(expected: ArchSpec, found: ArchSpec, form: str, *, where: str,
                source: str = "--arch", compare_head: bool = False) -> ArchSpec:
    """Check a detected architecture against the one the user named; return the spec to use.

    ``source`` names where ``expected`` came from ('--arch', '--config FILE').  Deploy files hold
    no trace of the branch count k, so it is not compared for them.  With ``compare_head`` (a
    config states its head) the class count must agree too; otherwise the file's head is kept.
    The result keeps ``expected``'s eps: a config's BatchNorm eps reaches the fusion.
    """
    from ..errors import BadInput

    diffs = arch_differences(expected, found, ignore_branches=form == "deploy",
                             compare_head=compare_head)
    if diffs:
        raise BadInput(f"{where}: holds a MobileOne {found.name}, not {expected.name} as {source} "
                       f"says ({'; '.join(diffs)})",
                       hint="fix the config or drop it to use the detected variant"
                       if source.startswith("--config") else
                       "drop --arch to use the detected variant")
    return dataclasses.replace(expected, num_classes=found.num_classes)
