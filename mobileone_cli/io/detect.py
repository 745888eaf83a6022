"""Find the MobileOne in a state dict from its keys and shapes alone (no torch needed).

:func:`detect_layout` answers: which layout, which form, which architecture (built-in name or a
custom spec), how many classes, under which prefix, and which keys are not part of it.  Anything
that does not fit the expected schema exactly is refused with a message that names what differs.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..arch.layouts import LAYOUTS, Layout, TensorEntry, get_layout, schema
from ..arch.specs import ArchSpec, match_builtin
from ..errors import BadInput
from ..rules.dtypes import FLOAT_DTYPES

__all__ = ["Detection", "Damaged", "detect_layout", "find_candidates", "implied_root", "TensorInfo"]

# key -> (dtype name, shape); dtype names as torch prints them without 'torch.' ('float32').
TensorInfo = Tuple[str, Tuple[int, ...]]
NOT_A_TENSOR = ", not a tensor"  # dtype suffix tensor_info gives values that are not tensors


@dataclass
class Detection:
    layout: str
    form: str
    arch: ArchSpec
    prefix: str = ""  # text before the layout's own keys ('backbone.', 'encoder.')
    extra_keys: List[str] = field(default_factory=list)  # keys that are not this MobileOne's
    dtype: str = "float32"
    # The layout's leading module path that the file lacks: 'backbone.' for an mmpretrain
    # backbone saved on its own (keys 'stage0.branch_conv_list...').  Entries keep the root.
    implied_root: str = ""

    @property
    def arch_name(self) -> str:
        return self.arch.name

    @property
    def num_classes(self) -> int:
        return self.arch.num_classes

    def entries(self) -> Tuple[TensorEntry, ...]:
        return schema(self.arch, self.layout, self.form)

    def full_key(self, key: str) -> str:
        if self.implied_root and key.startswith(self.implied_root):
            key = key[len(self.implied_root):]
        return self.prefix + key


def _markers(lay: Layout) -> Tuple[str, str]:
    return (f"{lay.stem}.{lay.part('conv', 0)}.weight", f"{lay.stem}.{lay.part('reparam')}.weight")


def find_candidates(keys: Sequence[str]) -> List[Tuple[str, str]]:
    """Every (layout, prefix) under which a MobileOne stem appears in ``keys``."""
    found = []
    for lay in LAYOUTS.values():
        for marker in _markers(lay):
            for k in keys:
                if k.endswith(marker):
                    prefix = k[: -len(marker)]
                    if (prefix == "" or prefix.endswith(".")) and (lay.name, prefix) not in found:
                        found.append((lay.name, prefix))
    return found


def implied_root(keys: Sequence[str]) -> str:
    """'backbone.' when ``keys`` hold an mmpretrain MobileOne backbone without its root module
    (``model.backbone.state_dict()``); '' otherwise.  Only a bare (unprefixed) stem counts."""
    lay = LAYOUTS["mmpretrain"]
    root = lay.stem.rpartition(".")[0] + "." if "." in lay.stem else ""
    if not root:
        return ""
    bare = {m[len(root):] for m in _markers(lay)}
    return root if any(k in bare for k in keys) else ""


def _block_form(sub: Mapping[str, TensorInfo], lay: Layout, path: str) -> Optional[str]:
    has_deploy = f"{path}.{lay.part('reparam')}.weight" in sub
    has_train = any(k.startswith(f"{path}.") and not k.startswith(f"{path}.{lay.part('se_reduce')}")
                    and not k.startswith(f"{path}.{lay.part('se_expand')}")
                    and not k.startswith(f"{path}.{lay.part('reparam')}.") for k in sub)
    if has_deploy and has_train:
        return "mixed"
    return "deploy" if has_deploy else ("train" if has_train else None)


def _count_indexed(sub: Mapping[str, TensorInfo], prefix: str) -> int:
    """1 + the largest integer n such that some key starts with ``prefix + n + '.'``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    best = -1
    for k in sub:
        m = pat.match(k)
        if m:
            best = max(best, int(m.group(1)))
    return best + 1


def _infer_arch(sub: Mapping[str, TensorInfo], lay: Layout, where: str) -> Tuple[ArchSpec, str]:
    """Read an ArchSpec off the shapes; returns (spec, form)."""
    stem_block = lay.stem
    forms: Dict[str, List[str]] = {"train": [], "deploy": [], "mixed": []}

    def weight_shape(path: str) -> Tuple[int, ...]:
        for part in ("reparam", "conv"):
            key = f"{path}.{lay.part(part, 0)}.weight"
            if key in sub:
                return tuple(sub[key][1])
        return ()

    def note_form(path: str) -> None:
        f = _block_form(sub, lay, path)
        if f:
            forms[f].append(path)

    note_form(stem_block)
    stem_w = weight_shape(stem_block)
    if len(stem_w) != 4:
        raise BadInput(f"{where}: the stem weight of the {lay.name} layout is not a 4-d conv "
                       f"kernel")
    stem_channels, in_channels, kernel_size = stem_w[0], stem_w[1], stem_w[2]
    if min(stem_w) <= 0 or kernel_size % 2 == 0:
        raise BadInput(f"{where}: the stem kernel has shape {list(stem_w)}; a MobileOne stem "
                       f"needs non-empty channels and an odd kernel size")
    stem_k = _count_indexed(sub, f"{stem_block}.{lay.conv_list}.") or 1

    widths, blocks, kbr, se_blocks = [], [], [], []
    se_shapes: List[Tuple[int, int]] = []  # (channels, reduced) of every SE found
    s = 1
    while True:
        dummy = lay.block.format(s=s, s0=s - 1, j="")
        n_blocks = _count_indexed(sub, dummy)
        if n_blocks == 0:
            break
        if n_blocks % 2:
            raise BadInput(f"{where}: stage {s} has {n_blocks} blocks; MobileOne stages hold "
                           f"depthwise+pointwise pairs (an even number)")
        paths = [lay.block.format(s=s, s0=s - 1, j=j) for j in range(n_blocks)]
        for p in paths:
            note_form(p)
        last = weight_shape(paths[-1])
        if len(last) != 4:
            raise BadInput(f"{where}: block {paths[-1]} has no conv weight")
        if last[0] <= 0:
            raise BadInput(f"{where}: block {paths[-1]} has {last[0]} output channels")
        widths.append(last[0])
        blocks.append(n_blocks // 2)
        kbr.append(_count_indexed(sub, f"{paths[0]}.{lay.conv_list}.") or 1)
        se_pairs = 0
        for pair in range(n_blocks // 2 - 1, -1, -1):
            if f"{paths[2 * pair + 1]}.{lay.part('se_reduce')}.weight" in sub:
                se_pairs += 1
                for p in paths[2 * pair: 2 * pair + 2]:
                    shape = tuple(sub.get(f"{p}.{lay.part('se_reduce')}.weight", (None, ()))[1])
                    if len(shape) == 4:
                        se_shapes.append((shape[1], shape[0]))
            else:
                break
        se_blocks.append(se_pairs)
        s += 1
    if not widths:
        raise BadInput(f"{where}: found a MobileOne stem but no stages "
                       f"(expected keys starting with {lay.block.format(s=1, s0=0, j=0)}.)")
    if forms["mixed"] or (forms["train"] and forms["deploy"]):
        tr = forms["train"] + forms["mixed"]
        dp = forms["deploy"] + forms["mixed"]
        raise BadInput(f"{where}: mixes train-form and deploy-form blocks "
                       f"(train: {_few(tr)}; deploy: {_few(dp)})",
                       hint="the file was saved half-fused; start again from the train checkpoint")
    form = "deploy" if forms["deploy"] else "train"
    head_key = f"{lay.head}.weight"
    num_classes = sub[head_key][1][0] if head_key in sub and len(sub[head_key][1]) == 2 else 0
    spec = ArchSpec(name="custom", stem_channels=stem_channels, widths=tuple(widths),
                    blocks=tuple(blocks), conv_branches=tuple(kbr), se_blocks=tuple(se_blocks),
                    num_classes=num_classes, kernel_size=kernel_size, in_channels=in_channels,
                    stem_conv_branches=stem_k, se_ratio=_se_ratio(se_shapes))
    return spec, form


def _se_ratio(se_shapes: Sequence[Tuple[int, int]], default: float = 0.0625) -> float:
    """The SE reduction ratio that explains every SE's width (int(C * ratio)); else the default,
    and validation names the tensor that does not fit."""
    if not se_shapes or all(int(c * default) == r for c, r in se_shapes):
        return default
    c, r = max(se_shapes)
    ratio = r / c if c else default
    return ratio if all(int(ci * ratio) == ri for ci, ri in se_shapes) else default


def _few(items: Sequence[str], n: int = 4, width: int = 120) -> str:
    """The first ``n`` names, each cut to ``width`` characters (a key may be megabytes long)."""
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(k if len(k) <= width else k[: width - 3] + "..." for k in items[:n]) + more


def _name_spec(spec: ArchSpec, form: str) -> ArchSpec:
    """Give a detected spec its built-in name; for deploy files k is unknowable, so borrow it."""
    from ..arch.specs import builtin_archs

    for name, known in builtin_archs().items():
        candidate = spec
        if len(known.widths) != len(spec.widths):
            continue  # another number of stages: cannot be this variant (nor borrow its k)
        if form == "deploy":
            candidate = dataclasses.replace(spec, conv_branches=known.conv_branches,
                                            stem_conv_branches=known.stem_conv_branches)
        if known.same_backbone(candidate):
            return dataclasses.replace(candidate, name=name)
    if form == "deploy":
        spec = dataclasses.replace(spec, conv_branches=tuple(1 for _ in spec.widths),
                                   stem_conv_branches=1)
    return dataclasses.replace(spec, name=match_builtin(spec) or "custom")


class Damaged(BadInput):
    """A known MobileOne (layout, form and variant read off its keys) whose tensors are not all
    there or not all right: ``problems`` says what, one short line per kind of damage."""

    def __init__(self, where: str, det: Detection, problems: List[str]) -> None:
        super().__init__(f"{where}: damaged {det.layout} {det.form}-form MobileOne "
                         f"{det.arch.name}: " + "; ".join(problems))
        self.detection = det
        self.problems = problems


def _missing_by_block(missing: Sequence[str], expected: Mapping[str, TensorEntry]) -> str:
    """'stage3.7: all 29, stage2.3: 1 of 13 (stage2.3.rbr_skip.bias)': where the holes are."""
    per_block: Dict[str, List[str]] = {}
    for k in missing:
        per_block.setdefault(expected[k].block, []).append(k)
    sizes: Dict[str, int] = {}
    for e in expected.values():
        sizes[e.block] = sizes.get(e.block, 0) + 1
    parts = [f"{b}: all {sizes[b]}" if len(ks) == sizes[b] else
             f"{b}: {len(ks)} of {sizes[b]} ({_few(ks, 2)})" for b, ks in per_block.items()]
    return _few(parts, 4, width=200)


def _validate(sub: Mapping[str, TensorInfo], det: Detection, where: str) -> List[str]:
    """Check every expected key, shape and dtype; return the keys that are not this
    MobileOne's.  Every kind of damage found is named at once (:class:`Damaged`)."""
    lay = get_layout(det.layout)
    expected = {e.key: e for e in det.entries()}
    roots = tuple(f"{lay.block_path(b)}." for b in det.arch.block_specs()) + (f"{lay.head}.",)
    missing = [k for k in expected if k not in sub]
    ours = [k for k in sub if k.startswith(roots)]
    unexpected = [k for k in ours if k not in expected]
    problems: List[str] = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_missing_by_block(missing, expected)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected, 3)}")
    not_tensors, shapes, dtypes = [], [], []
    for k, e in expected.items():
        if k not in sub:
            continue
        dtype, shape = sub[k]
        if dtype.endswith(NOT_A_TENSOR):
            not_tensors.append(f"{det.prefix}{k} is {dtype}")
        elif tuple(shape) != e.shape:
            shapes.append(f"{det.prefix}{k} has shape {list(shape)}, expected {list(e.shape)}")
        elif e.kind != "counter" and dtype not in FLOAT_DTYPES:
            dtypes.append(f"{det.prefix}{k} is {dtype}")
    if not_tensors:
        problems.append(f"{len(not_tensors)} value(s) not a tensor: {_few(not_tensors, 2)}")
    if shapes:
        problems.append(f"{len(shapes)} wrong shape(s): {_few(shapes, 2)}")
    if dtypes:
        problems.append(f"{len(dtypes)} tensor(s) not floating-point: {_few(dtypes, 2)}")
    if problems:
        raise Damaged(where, det, problems)
    return [k for k in sub if k not in expected]


def _generic_hint(keys: Sequence[str]) -> Optional[str]:
    """A hint to try ``--generic`` when keys name MobileOne-style branches (FastViT, MobileCLIP
    and other networks built of MobileOne blocks), None otherwise."""
    roots = {dict(lay.parts)[part].split(".")[0] for lay in LAYOUTS.values()
             for part in ("conv", "scale")}
    example = next((k for k in keys if any(k.startswith(r + ".") or f".{r}." in k
                                           for r in roots)), None)
    if example is None:
        return None
    return (f"keys such as {example!r} name MobileOne-style branches outside a known "
            f"MobileOne: for another network built of such blocks (FastViT, MobileCLIP, ...) "
            f"try `mobileone convert --generic SRC DST`")


def detect_layout(tensors: Mapping[str, TensorInfo], *, layout: Optional[str] = None,
                  prefix: Optional[str] = None, where: str = "checkpoint") -> Detection:
    """Detect layout, form, architecture, classes and prefix of the MobileOne in ``tensors``."""
    keys = list(tensors)
    cands = find_candidates(keys)
    if layout is not None:
        cands = [c for c in cands if c[0] == get_layout(layout).name]
    if prefix is not None:
        p = prefix if prefix == "" or prefix.endswith(".") else prefix + "."
        cands = [c for c in cands if c[1] == p]
    root = implied_root(keys) if not cands and not prefix else ""
    if root and (layout is None or get_layout(layout).name == "mmpretrain"):
        det = detect_layout({root + k: v for k, v in tensors.items()}, layout="mmpretrain",
                            prefix="", where=where)
        det.implied_root = root
        det.extra_keys = [k[len(root):] if k.startswith(root) else k for k in det.extra_keys]
        return det
    if not cands:
        shown = sorted(keys)[:3]
        sample = (", ".join(shown) + (f" and {len(keys) - len(shown)} more"
                                      if len(keys) > len(shown) else "")) if keys else "none"
        want = "; ".join(f"{n}: {_markers(lay)[0]}" for n, lay in LAYOUTS.items())
        raise BadInput(f"{where}: no MobileOne found (expected a stem key such as {want}; "
                       f"found {len(keys)} keys such as {sample})", hint=_generic_hint(keys))
    if len(cands) > 1:
        # No stem key matches two layouts' markers, so every candidate is another stem: another
        # network (teacher/student, model/EMA copy).  Guessing one (say, the shortest prefix)
        # would convert a network the user may not mean: ask.
        raise BadInput(f"{where}: several MobileOnes found: "
                       + ", ".join(f"{n} under {p or '(no prefix)'!r}" for n, p in cands),
                       hint="choose one with --prefix")
    lay_name, pfx = cands[0]
    lay = get_layout(lay_name)
    sub = {k[len(pfx):]: v for k, v in tensors.items() if k.startswith(pfx)}
    spec, form = _infer_arch(sub, lay, where)
    spec = _name_spec(spec, form)
    det = Detection(layout=lay_name, form=form, arch=spec, prefix=pfx)
    extra_inside = _validate(sub, det, where)
    outside = [k for k in keys if not k.startswith(pfx)]
    det.extra_keys = [pfx + k for k in extra_inside] + outside
    float_dtypes = {tensors[pfx + e.key][0] for e in det.entries() if e.kind == "param"}
    det.dtype = ",".join(sorted(float_dtypes)) if float_dtypes else "float32"
    return det


def tensor_info(state_dict: Mapping[str, object]) -> Dict[str, TensorInfo]:
    """{key: (dtype, shape)} of a state dict of torch tensors (no torch import needed here)."""
    out: Dict[str, TensorInfo] = {}
    for k, v in state_dict.items():
        if type(v).__module__.split(".")[0] != "torch" or not hasattr(v, "dtype"):
            out[k] = (f"a {type(v).__name__}{NOT_A_TENSOR}", ())  # e.g. an int or a numpy array
            continue
        dtype = str(getattr(v, "dtype", type(v).__name__)).replace("torch.", "")
        shape = tuple(getattr(v, "shape", ()))
        out[k] = (dtype, tuple(int(d) for d in shape))
    return out
