"""State-dict key layouts (Apple, mmpretrain, timm) as data.

The canonical naming inside the tool is Apple's. A :class:`Layout` says where each module of a
MobileOne lives under one ecosystem's naming; :func:`schema` expands an architecture into the
full ordered list of expected tensors (key, shape, kind) for a layout and form.  Remapping between
layouts is then a dictionary lookup, never a string replace.

This module never imports torch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from .specs import ArchSpec, BlockSpec

__all__ = ["Layout", "LAYOUTS", "LAYOUT_NAMES", "FORMS", "TensorEntry", "schema", "key_map",
           "get_layout", "BN_LEAVES", "block_names", "stage_names", "in_layout"]

FORMS = ("train", "deploy")
BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

@dataclass(frozen=True)
class Layout:
    """Where a MobileOne's modules live in one ecosystem's state dict."""

    name: str
    stem: str  # module path of the stem block
    block: str  # module path of block j of stage s; fields {s}, {s0} (= s - 1), {j}
    head: str  # module path of the classifier Linear
    parts: Tuple[Tuple[str, str], ...]  # canonical part -> module path inside a block; {n} = branch

    def part(self, name: str, n: int = 0) -> str:
        return dict(self.parts)[name].format(n=n)

    @property
    def conv_list(self) -> str:
        """Module path (inside a block) of the list holding the k conv branches."""
        return dict(self.parts)["conv"].split(".{n}")[0]

    def block_path(self, block: BlockSpec) -> str:
        if block.stage == 0:
            return self.stem
        j = block.name.split(".", 1)[1]
        return self.block.format(s=block.stage, s0=block.stage - 1, j=j)


LAYOUTS: Dict[str, Layout] = {
    "apple": Layout(
        name="apple", stem="stage0", block="stage{s}.{j}", head="linear",
        parts=(("conv", "rbr_conv.{n}.conv"), ("conv_bn", "rbr_conv.{n}.bn"),
               ("scale", "rbr_scale.conv"), ("scale_bn", "rbr_scale.bn"), ("skip", "rbr_skip"),
               ("se_reduce", "se.reduce"), ("se_expand", "se.expand"),
               ("reparam", "reparam_conv"))),
    "mmpretrain": Layout(
        name="mmpretrain", stem="backbone.stage0", block="backbone.stage{s}.{j}", head="head.fc",
        parts=(("conv", "branch_conv_list.{n}.conv"), ("conv_bn", "branch_conv_list.{n}.norm"),
               ("scale", "branch_scale.conv"), ("scale_bn", "branch_scale.norm"),
               ("skip", "branch_norm"), ("se_reduce", "se.conv1.conv"),
               ("se_expand", "se.conv2.conv"), ("reparam", "branch_reparam"))),
    "timm": Layout(
        name="timm", stem="stem", block="stages.{s0}.{j}", head="head.fc",
        parts=(("conv", "conv_kxk.{n}.conv"), ("conv_bn", "conv_kxk.{n}.bn"),
               ("scale", "conv_scale.conv"), ("scale_bn", "conv_scale.bn"), ("skip", "identity"),
               ("se_reduce", "attn.fc1"), ("se_expand", "attn.fc2"), ("reparam", "reparam_conv"))),
}
LAYOUT_NAMES = tuple(LAYOUTS)
# Other names users give the same layouts (mmcls is mmpretrain's former name).
LAYOUT_ALIASES = {"mmcls": "mmpretrain", "mmclassification": "mmpretrain",
                  "openmmlab": "mmpretrain",
                  "ml-mobileone": "apple", "pytorch-image-models": "timm"}


def get_layout(name: str) -> Layout:
    """A layout by name or alias ('mmcls' is 'mmpretrain')."""
    key = name.strip().lower()
    try:
        return LAYOUTS[LAYOUT_ALIASES.get(key, key)]
    except KeyError:
        raise KeyError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None


@dataclass(frozen=True)
class TensorEntry:
    """One expected tensor of a checkpoint."""

    canonical: str  # Apple key
    key: str  # key in the layout
    shape: Tuple[int, ...]
    kind: str  # 'param', 'buffer' (running stats) or 'counter' (num_batches_tracked)
    block: str  # canonical block name, or 'linear' for the head


def _bn(entries: List[Tuple[str, str, Tuple[int, ...], str]], part: str, n: int, c: int) -> None:
    for leaf in BN_LEAVES:
        shape: Tuple[int, ...] = () if leaf == "num_batches_tracked" else (c,)
        kind = "param" if leaf in ("weight", "bias") else (
            "counter" if leaf == "num_batches_tracked" else "buffer")
        entries.append((part, f"{n}|{leaf}", shape, kind))


def _block_parts(b: BlockSpec, form: str) -> List[Tuple[str, str, Tuple[int, ...], str]]:
    """(part, 'n|leaf', shape, kind) for one block, in Apple's module order."""
    cin_g = b.in_channels // b.groups
    k = b.kernel_size
    out: List[Tuple[str, str, Tuple[int, ...], str]] = []
    if b.has_se:
        out.append(("se_reduce", "0|weight", (b.se_channels, b.out_channels, 1, 1), "param"))
        out.append(("se_reduce", "0|bias", (b.se_channels,), "param"))
        out.append(("se_expand", "0|weight", (b.out_channels, b.se_channels, 1, 1), "param"))
        out.append(("se_expand", "0|bias", (b.out_channels,), "param"))
    if form == "deploy":
        out.append(("reparam", "0|weight", (b.out_channels, cin_g, k, k), "param"))
        out.append(("reparam", "0|bias", (b.out_channels,), "param"))
        return out
    if b.has_identity:
        _bn(out, "skip", 0, b.in_channels)
    for n in range(b.conv_branches):
        out.append(("conv", f"{n}|weight", (b.out_channels, cin_g, k, k), "param"))
        _bn(out, "conv_bn", n, b.out_channels)
    if b.has_scale:
        out.append(("scale", "0|weight", (b.out_channels, cin_g, 1, 1), "param"))
        _bn(out, "scale_bn", 0, b.out_channels)
    return out


@functools.lru_cache(maxsize=256)
def _schema(arch: ArchSpec, layout_name: str, form: str) -> Tuple[TensorEntry, ...]:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    apple = LAYOUTS["apple"]
    lay = LAYOUTS[layout_name]
    entries: List[TensorEntry] = []
    for b in arch.block_specs():
        a_path, l_path = apple.block_path(b), lay.block_path(b)
        for part, nleaf, shape, kind in _block_parts(b, form):
            n_str, leaf = nleaf.split("|")
            n = int(n_str)
            entries.append(TensorEntry(
                canonical=f"{a_path}.{apple.part(part, n)}.{leaf}",
                key=f"{l_path}.{lay.part(part, n)}.{leaf}",
                shape=shape, kind=kind, block=b.name))
    if arch.has_head:
        for leaf, shape in (("weight", (arch.num_classes, arch.head_channels)),
                            ("bias", (arch.num_classes,))):
            entries.append(TensorEntry(f"{apple.head}.{leaf}", f"{lay.head}.{leaf}", shape,
                                       "param", "linear"))
    return tuple(entries)


def schema(arch: ArchSpec, layout: str = "apple", form: str = "train") -> Tuple[TensorEntry, ...]:
    """Every tensor a ``form`` checkpoint of ``arch`` holds in ``layout``, in save order."""
    return _schema(arch, get_layout(layout).name, form)


@functools.lru_cache(maxsize=256)
def _key_map(arch: ArchSpec, src: str, dst: str, form: str) -> Dict[str, str]:
    return {e_src.key: e_dst.key
            for e_src, e_dst in zip(schema(arch, src, form), schema(arch, dst, form))}


def key_map(arch: ArchSpec, src: str, dst: str, form: str) -> Dict[str, str]:
    """{key in ``src`` layout: key in ``dst`` layout} for every tensor of ``arch`` in ``form``."""
    return _key_map(arch, get_layout(src).name, get_layout(dst).name, form)


@functools.lru_cache(maxsize=64)
def _block_names(arch: ArchSpec, layout_name: str) -> Dict[str, str]:
    lay = LAYOUTS[layout_name]
    names = {b.name: lay.block_path(b) for b in arch.block_specs()}
    names["linear"] = lay.head
    return names


def block_names(arch: ArchSpec, layout: str) -> Dict[str, str]:
    """{canonical block name: that block's module path in ``layout``}: ``stage2.5`` is
    ``stages.1.5`` in timm, ``backbone.stage2.5`` in mmpretrain; the head is ``linear``."""
    return dict(_block_names(arch, get_layout(layout).name))


def stage_names(arch: ArchSpec, layout: str) -> Dict[str, str]:
    """{canonical stage name ('stem', 'stage1', ..., 'head'): its module path in ``layout``}."""
    lay = get_layout(layout)
    names = {"stem": lay.stem, "head": lay.head.rsplit(".", 1)[0] if "." in lay.head
             else lay.head}
    for s in range(1, arch.num_stages + 1):
        names[f"stage{s}"] = lay.block.split(".{j}")[0].format(s=s, s0=s - 1)
    return names


def in_layout(canonical: str, names: Mapping[str, str]) -> str:
    """``stages.1.5 (stage2.5)``: a block or stage named as the file names it, the canonical
    (Apple) name beside it; the canonical name alone where the two agree or none is known."""
    own = names.get(canonical)
    return canonical if not own or own == canonical else f"{own} ({canonical})"


def remap(state_dict: Mapping[str, Any], arch: ArchSpec, src: str, dst: str,
          form: str) -> Dict[str, Any]:
    """Rename every tensor from one layout to another, in the destination's save order.

    The tensors are not copied.  Keys that are not part of the MobileOne are refused by the
    caller beforehand (detection), so a missing key here is a programming error.
    """
    mapping = key_map(arch, src, dst, form)
    if src == dst:
        return {k: state_dict[k] for k in mapping}
    return {mapping[k]: state_dict[k] for k in mapping}


def param_count(entries: Iterable[TensorEntry]) -> int:
    """Learnable parameters (conv/linear weights and biases, BN affine), not running stats."""
    total = 0
    for e in entries:
        if e.kind == "param":
            n = 1
            for d in e.shape:
                n *= d
            total += n
    return total
