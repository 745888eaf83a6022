"""Exact parameter and MAC counts of a MobileOne, from the architecture alone (no forward pass).

Everything here is integer arithmetic over :meth:`ArchSpec.block_specs`, so the numbers are exact
at any input size and this module never imports torch.  Three conventions are reported:

* ``macs``: multiply-accumulates of every conv and linear layer, head included (the paper's
  "FLOPs" column, which is really MACs); SE's two 1x1 convs run on the pooled 1x1 map.
* ``flops``: 2 x MACs, which is what ``torch.utils.flop_counter.FlopCounterMode`` reports.
* ``mmpretrain``: what mmpretrain's metafile publishes (mmengine's fvcore-style counter run on
  backbone + neck): conv MACs without the head, plus one op per element read by every adaptive
  average pool (the neck's global pool and each SE pool), plus 2 ops per element of every
  BatchNorm in eval mode (affine), which only the train form has.

BatchNorm, ReLU, sigmoid and the additions of the branches are not MACs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

from ..rules.dtypes import numel, tensor_bytes
from .layouts import FORMS
from .specs import ArchSpec, BlockSpec

__all__ = ["Count", "FormCount", "ArchStats", "FileCount", "CONVENTIONS", "FORMS", "conv_out",
           "block_count", "count_form", "arch_stats", "file_count", "part_name"]

CONVENTIONS = {
    "macs": "multiply-accumulates of conv + linear layers, head included "
            "(the paper's 'FLOPs' column is this number)",
    "flops": "2 x MACs, as torch.utils.flop_counter.FlopCounterMode reports",
    "mmpretrain": "mmpretrain metafile / fvcore-style: backbone conv MACs + global and SE pooling "
                  "(1 per element read) + eval-mode BatchNorm (2 per element), head excluded",
}
DEFAULT_SIZE = (224, 224)


@dataclass
class Count:
    """What one part of the network holds and costs for one input image."""

    params: int = 0  # learnable: conv/linear weights and biases, BN gamma and beta
    buffers: int = 0  # BN running mean/var and num_batches_tracked (one element each)
    macs: int = 0  # conv + linear multiply-accumulates
    pool_elems: int = 0  # elements read by average pools (global pool, SE pools)
    bn_elems: int = 0  # elements normalised by BatchNorm

    def __add__(self, other: "Count") -> "Count":
        return Count(*(a + b for a, b in zip(astuple(self), astuple(other))))

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def value(self, convention: str, head: bool = False) -> int:
        """This part's compute under ``convention`` (``head``: the part is the classifier)."""
        if convention == "macs":
            return self.macs
        if convention == "flops":
            return 2 * self.macs
        if convention == "mmpretrain":
            linear = self.macs if head else 0  # the classifier is not counted, its pool is
            return self.macs - linear + self.pool_elems + 2 * self.bn_elems
        raise ValueError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")


def astuple(c: Count) -> Tuple[int, ...]:
    return (c.params, c.buffers, c.macs, c.pool_elems, c.bn_elems)


@dataclass
class FormCount:
    """Per-part counts of one form: parts are 'stem', 'stage1'.., 'head', in network order."""

    form: str
    parts: Dict[str, Count]

    @property
    def total(self) -> Count:
        out = Count()
        for c in self.parts.values():
            out = out + c
        return out

    def value(self, convention: str) -> int:
        return sum(c.value(convention, head=(name == "head")) for name, c in self.parts.items())

    def part_value(self, name: str, convention: str) -> int:
        return self.parts[name].value(convention, head=(name == "head"))


@dataclass
class ArchStats:
    """Train and deploy counts of one architecture at one input size."""

    arch: ArchSpec
    input_size: Tuple[int, int]
    train: FormCount
    deploy: FormCount
    output_size: Tuple[int, int] = (0, 0)  # spatial size of the last feature map

    def form(self, name: str) -> FormCount:
        return self.train if name == "train" else self.deploy

    def to_dict(self) -> Dict[str, object]:
        def form_dict(fc: FormCount) -> Dict[str, object]:
            parts = {n: dict(asdict(c), flops=c.flops,
                             mmpretrain=c.value("mmpretrain", head=(n == "head")))
                     for n, c in fc.parts.items()}
            t = fc.total
            total = dict(asdict(t), flops=t.flops, mmpretrain=fc.value("mmpretrain"))
            return {"parts": parts, "total": total}

        tr, dp = self.train.total, self.deploy.total
        return {
            "arch": self.arch.name, "num_classes": self.arch.num_classes,
            "input_size": list(self.input_size), "feature_map": list(self.output_size),
            "conventions": dict(CONVENTIONS),
            "train": form_dict(self.train), "deploy": form_dict(self.deploy),
            "reduction": {
                "params": tr.params - dp.params, "macs": tr.macs - dp.macs,
                "flops": tr.flops - dp.flops,
                "mmpretrain": self.train.value("mmpretrain") - self.deploy.value("mmpretrain"),
                "params_ratio": _ratio(tr.params, dp.params),
                "macs_ratio": _ratio(tr.macs, dp.macs),
            },
        }


def _ratio(a: int, b: int) -> Optional[float]:
    return a / b if b else None


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution: floor((size + 2p - k) / s) + 1."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"input of {size} pixels is too small for a {kernel}x{kernel} "
                         f"stride-{stride} convolution")
    return out


def _conv(cin: int, cout: int, groups: int, k: int, bias: bool) -> Tuple[int, int]:
    """(params, MACs per output pixel) of one convolution."""
    weights = cout * (cin // groups) * k * k
    return weights + (cout if bias else 0), weights


def block_count(b: BlockSpec, form: str, h: int, w: int) -> Tuple[Count, int, int]:
    """Counts of one block on an ``h`` x ``w`` input, and its output size."""
    ho = conv_out(h, b.kernel_size, b.stride, b.padding)
    wo = conv_out(w, b.kernel_size, b.stride, b.padding)
    pix = ho * wo
    c = Count()
    if form == "deploy":
        p, m = _conv(b.in_channels, b.out_channels, b.groups, b.kernel_size, bias=True)
        c.params += p
        c.macs += m * pix
    elif form == "train":
        branches = [b.kernel_size] * b.conv_branches + ([1] if b.has_scale else [])
        for k in branches:
            p, m = _conv(b.in_channels, b.out_channels, b.groups, k, bias=False)
            c.params += p + 2 * b.out_channels  # conv, then BN gamma and beta
            c.buffers += 2 * b.out_channels + 1
            c.macs += m * pix
            c.bn_elems += b.out_channels * pix
        if b.has_identity:
            c.params += 2 * b.in_channels
            c.buffers += 2 * b.in_channels + 1
            c.bn_elems += b.in_channels * pix
    else:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if b.has_se:  # after the branch sum, so identical in both forms
        r, ch = b.se_channels, b.out_channels
        c.params += (r * ch + r) + (ch * r + ch)
        c.macs += r * ch + ch * r  # two 1x1 convs on the pooled 1x1 map
        c.pool_elems += ch * pix
    return c, ho, wo


def part_name(stage: int) -> str:
    return "stem" if stage == 0 else f"stage{stage}"


def count_form(arch: ArchSpec, form: str,
               input_size: Sequence[int] = DEFAULT_SIZE) -> Tuple[FormCount, Tuple[int, int]]:
    """Per-part counts of ``arch`` in ``form`` for one ``(H, W)`` image, and the final map size."""
    h, w = int(input_size[0]), int(input_size[1])
    parts: Dict[str, Count] = {}
    for b in arch.block_specs():
        c, h, w = block_count(b, form, h, w)
        name = part_name(b.stage)
        parts[name] = parts.get(name, Count()) + c
    head = Count()
    if arch.has_head:
        c4, n = arch.head_channels, arch.num_classes
        head.params = c4 * n + n
        head.macs = c4 * n
        head.pool_elems = c4 * h * w  # global average pool before the linear layer
    else:  # a bare backbone still gets mmpretrain's pooling neck
        head.pool_elems = arch.head_channels * h * w
    parts["head"] = head
    return FormCount(form, parts), (h, w)


def arch_stats(arch: ArchSpec, input_size: Sequence[int] = DEFAULT_SIZE) -> ArchStats:
    """Train and deploy counts of ``arch`` at ``input_size`` (an int, ``(H, W)`` or '224x160')."""
    from ..rules.limits import parse_input_size

    size = parse_input_size(input_size)
    train, out = count_form(arch, "train", size)
    deploy, _ = count_form(arch, "deploy", size)
    return ArchStats(arch=arch, input_size=size, train=train, deploy=deploy, output_size=out)


@dataclass
class FileCount:
    """What a checkpoint file really holds, summed from its tensors' shapes."""

    params: int  # elements of the MobileOne's learnable tensors
    buffers: int  # elements of its running statistics and counters
    other: int  # elements of tensors that are not part of the MobileOne
    tensors: int  # number of tensors in the file
    bytes: int  # payload bytes of all tensors
    parts: Dict[str, int] = field(default_factory=dict)  # learnable elements per part

    @property
    def total(self) -> int:
        return self.params + self.buffers + self.other


def file_count(tensors: Mapping[str, Tuple[str, Sequence[int]]], detection) -> FileCount:
    """Sum the real tensors of a checkpoint, sorted by what the detected schema says they are.

    ``tensors`` is ``{key: (dtype, shape)}`` of the whole file (after unwrapping), ``detection``
    a :class:`mobileone_cli.detect.Detection` of it."""
    kinds = {detection.prefix + e.key: e for e in detection.entries()}
    specs = {b.name: b for b in detection.arch.block_specs()}
    params = buffers = other = nbytes = 0
    parts: Dict[str, int] = {}
    for key, (dtype, shape) in tensors.items():
        n = numel(shape)
        nbytes += tensor_bytes(dtype, shape, unknown=4)
        entry = kinds.get(key)
        if entry is None:
            other += n
        elif entry.kind == "param":
            params += n
            part = "head" if entry.block not in specs else part_name(specs[entry.block].stage)
            parts[part] = parts.get(part, 0) + n
        else:
            buffers += n
    return FileCount(params=params, buffers=buffers, other=other, tensors=len(tensors),
                     bytes=nbytes, parts=parts)
