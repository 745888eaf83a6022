"""Re-parameterisable blocks of the MobileOne family, as data: one table per family.

A :class:`BlockPattern` says, for one block type under one ecosystem's naming, which branches
it sums, how each folds into one conv, and the module the family's own deploy network keeps in
their place.  Detection, fusion, ``inspect`` and the ``convert --generic`` report all read these
tables; ``--blocks FILE.yaml`` adds patterns of the same shape (:mod:`.blocks_file`).

Branch kinds (the block's output is the sum of its branches, each times ``sign``, those marked
``scaled`` also times the block's per-channel ``layer_scale``):

* ``conv_bn``: a conv (weight, optional bias) then an eval-mode BatchNorm.  Every conv_bn branch
  of a block shares out channels and ``in/groups``; a smaller odd kernel is zero-padded, centred,
  to the block's largest (RepVGG's 1x1, MobileOne's scale branch, RepLKNet's small kernel).
* ``bn``: a BatchNorm on the block's input (the identity branch): in = out channels.
* ``conv``: a plain conv with optional bias, no BatchNorm (FastViT's RepCPE ``pe``).
* ``identity``: the input itself, no tensors (a residual the deploy conv absorbs).
* ``block``: a nested block of type ``of`` under the same naming (RepMixer's mixer and norm).

``{n}`` in a branch name is an index: a list of branches of one kind (MobileOne's k branches).
This module never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .layouts import LAYOUTS, Layout

__all__ = ["Branch", "BlockPattern", "PATTERNS", "BRANCH_KINDS", "FAMILIES", "patterns_by_type"]

BRANCH_KINDS = ("conv_bn", "bn", "conv", "identity", "block")


@dataclass(frozen=True)
class Branch:
    """One branch of a block: its module path inside the block and how it folds."""

    name: str  # module path inside the block ('' for kind 'identity'); '{n}': an indexed list
    kind: str  # one of BRANCH_KINDS
    conv: str = "conv"  # conv_bn: the conv's module name inside the branch
    bn: str = "bn"  # conv_bn: the BatchNorm's module name inside the branch
    kernel: Optional[int] = None  # conv_bn: the only kernel allowed (1: a 1x1 scale branch)
    sign: int = 1
    scaled: bool = False  # multiplied by the block's layer scale
    of: str = ""  # block: the nested block's type

    @property
    def root(self) -> str:
        """The first module name of the branch (what marks a key as belonging to it)."""
        return self.name.split(".", 1)[0]


@dataclass(frozen=True)
class BlockPattern:
    """A re-parameterisable block type under one naming, and its deploy form."""

    family: str  # 'MobileOne', 'FastViT/MobileCLIP', 'RepVGG', 'RepGhost', or a user's name
    block: str  # the block type, as its authors call it
    naming: str  # whose key names: 'apple', 'timm', 'mmpretrain', 'original', ...
    branches: Tuple[Branch, ...]
    fused: str  # module path of the deploy conv (weight and bias) inside the block
    required: Tuple[str, ...] = ()  # branch names every instance holds
    anchors: Tuple[str, ...] = ()  # branch names that mark a block (default: any branch)
    layer_scale: str = ""  # key (inside the block) of a per-channel scale, '' for none
    context: Tuple[str, ...] = ()  # block types (same naming) the file must also hold

    @property
    def label(self) -> str:
        return f"{self.block} ({self.naming})"

    def anchor_names(self) -> Tuple[str, ...]:
        return self.anchors or tuple(b.name for b in self.branches if b.kind != "identity")


def _mobileone(lay: Layout) -> BlockPattern:
    """MobileOne's block under one of the key layouts of :mod:`.layouts` (one source of names)."""
    conv, n, conv_sub = lay.part("conv").split(".")
    bn_sub = lay.part("conv_bn").split(".")[2]
    scale, scale_sub = lay.part("scale").split(".")
    scale_bn = lay.part("scale_bn").split(".")[1]
    return BlockPattern(
        "MobileOne", "MobileOneBlock", lay.name,
        (Branch(f"{conv}.{{n}}", "conv_bn", conv_sub, bn_sub),
         Branch(scale, "conv_bn", scale_sub, scale_bn, kernel=1),
         Branch(lay.part("skip"), "bn")),
        fused=lay.part("reparam"))


MOBILEONE = tuple(_mobileone(lay) for lay in LAYOUTS.values())

_FV = "FastViT/MobileCLIP"
_FV_CONTEXT = ("RepMixer", "ReparamLargeKernelConv")
FASTVIT = (
    BlockPattern(_FV, "ReparamLargeKernelConv", "apple",
                 (Branch("lkb_origin", "conv_bn"), Branch("small_conv", "conv_bn")),
                 fused="lkb_reparam", required=("lkb_origin",), anchors=("lkb_origin",)),
    BlockPattern(_FV, "ReparamLargeKernelConv", "timm",
                 (Branch("large_conv", "conv_bn"), Branch("small_conv", "conv_bn")),
                 fused="reparam_conv", required=("large_conv",), anchors=("large_conv",)),
    BlockPattern(_FV, "RepMixer", "apple",
                 (Branch("", "identity"),
                  Branch("mixer", "block", sign=1, scaled=True, of="MobileOneBlock"),
                  Branch("norm", "block", sign=-1, scaled=True, of="MobileOneBlock")),
                 fused="reparam_conv", required=("mixer", "norm"), layer_scale="layer_scale"),
    BlockPattern(_FV, "RepMixer", "timm",
                 (Branch("", "identity"),
                  Branch("mixer", "block", sign=1, scaled=True, of="MobileOneBlock"),
                  Branch("norm", "block", sign=-1, scaled=True, of="MobileOneBlock")),
                 fused="reparam_conv", required=("mixer", "norm"),
                 layer_scale="layer_scale.gamma"),
    # A conv named 'pe' is only a RepCPE inside a FastViT: the context says so.
    BlockPattern(_FV, "RepCPE", "apple", (Branch("pe", "conv"), Branch("", "identity")),
                 fused="reparam_conv", required=("pe",), context=_FV_CONTEXT),
    BlockPattern(_FV, "RepCPE", "timm", (Branch("pos_enc", "conv"), Branch("", "identity")),
                 fused="reparam_conv", required=("pos_enc",), context=_FV_CONTEXT),
)

REPVGG = (
    BlockPattern("RepVGG", "RepVggBlock", "timm",
                 (Branch("conv_kxk", "conv_bn"), Branch("conv_1x1", "conv_bn", kernel=1),
                  Branch("identity", "bn")), fused="reparam_conv"),
    BlockPattern("RepVGG", "RepVGGBlock", "mmpretrain",
                 (Branch("branch_3x3", "conv_bn", bn="norm"),
                  Branch("branch_1x1", "conv_bn", bn="norm", kernel=1),
                  Branch("branch_norm", "bn")), fused="branch_reparam"),
    BlockPattern("RepVGG", "RepVGGBlock", "original",
                 (Branch("rbr_dense", "conv_bn"), Branch("rbr_1x1", "conv_bn", kernel=1),
                  Branch("rbr_identity", "bn")), fused="rbr_reparam"),
)

REPGHOST = (
    # timm's and the original repository's RepGhostModule: the deploy conv takes the place, and
    # the name, of the cheap operation; the identity is fusion_conv (nn.Identity) + fusion_bn.0.
    BlockPattern("RepGhost", "RepGhostModule", "timm",
                 (Branch("cheap_operation", "conv_bn", conv="0", bn="1"),
                  Branch("fusion_bn.0", "bn")),
                 fused="cheap_operation", required=("cheap_operation", "fusion_bn.0"),
                 anchors=("fusion_bn.0",)),
)

PATTERNS: Tuple[BlockPattern, ...] = MOBILEONE + FASTVIT + REPVGG + REPGHOST
FAMILIES = tuple(dict.fromkeys(p.family for p in PATTERNS))


def patterns_by_type(patterns: Tuple[BlockPattern, ...]) -> Dict[Tuple[str, str], BlockPattern]:
    """{(block type, naming): pattern}: how nested 'block' branches find their pattern."""
    return {(p.block, p.naming): p for p in patterns}
