"""What :mod:`.generic` reports of one re-parameterisable block found in a state dict: its
branches, shapes, and where each assumed value came from (no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .generic_keys import Kernel, Parts

__all__ = ["FoundBranch", "FoundBlock"]


@dataclass(frozen=True)
class FoundBranch:
    name: str  # module path inside the block ('' for the input itself)
    kind: str  # conv_bn, bn, conv, identity, block
    kernel: Optional[Kernel] = None
    sign: int = 1
    scaled: bool = False
    fixed: bool = False  # its kernel is fixed by the pattern (a 1x1 scale branch)


@dataclass(frozen=True)
class FoundBlock:
    """One re-parameterisable block, as far as its tensors (and the stated rules) tell."""

    path: str  # module path ('' for a state dict of one bare block)
    family: str
    block_type: str
    naming: str
    branches: Tuple[FoundBranch, ...]
    out_channels: int
    in_per_group: int  # weight.shape[1]
    kernel_size: Kernel
    groups: Optional[int]  # None: not fixed by the tensors and not needed (no identity)
    kernel_from: str  # 'weights', 'sibling <path>', '--norm-kernel', 'default 1x1', 'nested'
    groups_from: str  # 'identity BN', 'identity', 'depthwise default', '--groups', 'nested', ...
    train_keys: Tuple[str, ...]
    weight_key: str  # the fused conv's keys in the output
    bias_key: str
    subs: Tuple["FoundBlock", ...] = ()
    layer_scale_key: Optional[str] = None
    parts: Optional[Parts] = field(compare=False, repr=False, default=None)

    @property
    def conv_branches(self) -> int:
        return sum(b.kind == "conv_bn" and not b.fixed for b in self.branches)

    @property
    def has_scale(self) -> bool:
        return any(b.kind == "conv_bn" and b.fixed for b in self.branches)

    @property
    def has_identity(self) -> bool:
        return any(b.kind in ("bn", "identity") for b in self.branches)

    @property
    def in_channels(self) -> Optional[int]:
        return None if self.groups is None else self.groups * self.in_per_group

    @property
    def kernel_text(self) -> str:
        return f"{self.kernel_size[0]}x{self.kernel_size[1]}"

    @property
    def summary(self) -> str:
        """The branches in a few characters: '2x3x3+1x1+bn', 'x+s*(mixer-norm)'."""
        if self.subs:
            inner = "".join(("-" if b.sign < 0 else "+") + b.name for b in self.branches
                            if b.kind == "block").lstrip("+")
            scaled = "s*" if self.layer_scale_key else ""
            return f"x+{scaled}({inner})"
        out: List[str] = []
        convs: Dict[Tuple[str, Optional[Kernel]], int] = {}
        for b in self.branches:
            if b.kind in ("conv_bn", "conv"):
                k = (b.kind, b.kernel)
                convs[k] = convs.get(k, 0) + 1
        for (kind, k), n in convs.items():
            text = f"{k[0]}x{k[1]}" + ("" if kind == "conv_bn" else " conv")
            out.append(f"{n}x{text}" if n > 1 else text)
        out += ["bn" for b in self.branches if b.kind == "bn"]
        out += ["x" for b in self.branches if b.kind == "identity"]
        return "+".join(out)

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "family": self.family, "block": self.block_type,
                "naming": self.naming, "branches": self.summary,
                "conv_branches": self.conv_branches, "scale": self.has_scale,
                "identity": self.has_identity, "kernel_size": list(self.kernel_size),
                "kernel_from": self.kernel_from, "groups": self.groups,
                "groups_from": self.groups_from, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "weight_key": self.weight_key,
                "nested": [s.path for s in self.subs]}
