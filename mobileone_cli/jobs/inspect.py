"""What a file holds, and how healthy its numbers are, as plain data: the library side of
``mobileone inspect``.

Four kinds of report (``kind``): ``mobileone`` (a MobileOne was found: layout, form, variant ...),
``damaged`` (a known MobileOne that convert would refuse: missing keys, wrong shapes or dtypes),
``checkpoint`` (any other checkpoint: its structure, tensors, what was not recognised) and ``onnx``
(an exported graph: opsets, inputs, outputs, initializers; needs the onnx extra).

Cost, by path: a ``.safetensors`` file is listed from its JSON header alone; with ``health`` its
values are memory-mapped and examined with numpy, still without torch, except that the eps
sensitivity of a train-form MobileOne is measured with the tool's fusion, which imports torch.
Torch files are loaded the safe way (weights-only, foreign objects as placeholders) unless the
caller passes ``trust``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

from ..arch.layouts import param_count
from ..arch.specs import expect_arch
from ..errors import BadInput
from ..io.detect import Damaged, Detection, TensorInfo, detect_layout, tensor_info

__all__ = ["inspect_file", "describe"]




def _elements(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def describe(listing: Mapping[str, TensorInfo], det: Detection, /, **file_facts: Any
             ) -> Dict[str, Any]:
    """The inspect report of a detected MobileOne; ``file_facts`` are merged in first."""
    entries = det.entries()
    ours = len(entries)
    return {
        "kind": "mobileone",
        **file_facts,
        "layout": det.layout,
        "form": det.form,
        "variant": det.arch.name,
        "num_classes": det.arch.num_classes,
        "prefix": det.prefix,
        "implied_root": det.implied_root,
        "dtype": det.dtype,
        "keys": len(listing),
        "mobileone_keys": ours,
        "params": param_count(entries),
        "tensor_elements": sum(_elements(shape) for _, shape in listing.values()),
        "unknown_keys": list(det.extra_keys),
        "arch": det.arch.to_dict(),
    }


def _generic_blocks(infos: Mapping[str, TensorInfo], patterns=None) -> Dict[str, Any]:
    """Re-parameterisable blocks found by key names and shapes, per family and block type, with
    what ``convert --generic`` would do with each: fuse it, or leave it alone (and why)."""
    from ..arch.blocks import PATTERNS
    from ..fuse.generic import find_blocks_grouped
    from ..fuse.generic_keys import group_keys

    patterns = PATTERNS if patterns is None else patterns
    report: Dict[str, Any] = {"blocks": 0, "fused": 0, "types": [], "left_alone": [],
                              "problem": None}
    try:
        blocks, already, grouping = find_blocks_grouped(infos, patterns=patterns)
    except BadInput as exc:  # a block it would refuse: say why, as convert --generic would
        report["problem"] = exc.message
        try:
            grouping = group_keys(list(infos), patterns)
        except BadInput:
            return report
        blocks, already = [], grouping.already
        found = [(p.pattern, "cannot fuse") for p in grouping.blocks.values()]
    else:
        found = [(b.parts.pattern, "will fuse") for b in blocks if b.parts is not None]
    # MobileOne blocks inside a FastViT/MobileCLIP (same naming) are listed under that family
    fastvit = {p.naming for p, _ in found if p.family.startswith("FastViT")}
    types: Dict[tuple, Dict[str, Any]] = {}
    for pat, verdict in found:
        family = ("FastViT/MobileCLIP" if pat.block == "MobileOneBlock" and pat.naming in fastvit
                  else pat.family)
        row = types.setdefault((family, pat.block, pat.naming, verdict),
                               {"family": family, "block": pat.block, "naming": pat.naming,
                                "count": 0, "action": verdict})
        row["count"] += 1
    for path, pat, why in grouping.left_alone:
        row = types.setdefault((pat.family, pat.block, pat.naming, "left alone"),
                               {"family": pat.family, "block": pat.block, "naming": pat.naming,
                                "count": 0, "action": "left alone"})
        row["count"] += 1
        report["left_alone"].append({"path": path, "block": pat.label, "why": why})
    report.update(blocks=len(blocks), fused=len(already), types=list(types.values()))
    return report


def _not_mobileone(infos: Dict[str, TensorInfo], reason: str, unwrapped: bool, patterns=None,
                   **facts: Any) -> Dict[str, Any]:
    from ..io.contents import tensor_totals

    report = {"kind": "checkpoint", **facts, "reason": reason, "keys": len(infos),
              **tensor_totals(infos), "unknown_keys": list(infos), "generic": None,
              "hint": None}
    if unwrapped:
        gen = _generic_blocks(infos, patterns)
        report["generic"] = gen
        if gen["blocks"]:
            report["hint"] = (f"{gen['blocks']} re-parameterisable block(s) found by key name: "
                              f"try `mobileone convert --generic SRC DST`")
    return report


def _onnx(path: str) -> Dict[str, Any]:
    from ..runtimes.onnx import describe as describe_onnx

    if os.path.isdir(path):
        raise BadInput(f"{path}: is a directory, not an ONNX file")
    if not os.path.isfile(path):
        raise BadInput(f"{path}: no such file")
    return {"kind": "onnx", "file": path, "file_format": "onnx", "size": os.path.getsize(path),
            **describe_onnx(path)}


def _safetensors(path: str, ema: bool, health: bool):
    """(facts, tensor listing, values or None, unread keys) of a safetensors file."""
    from ..io.arrays import tensor_bytes
    from ..io.read import read_safetensors_layout, strip_prefix

    if ema:
        raise BadInput(f"{path}: --ema given but a safetensors file holds one flat state dict")
    layout = read_safetensors_layout(path)
    metadata = layout.metadata
    infos, stripped = strip_prefix(layout.tensors())
    facts = {"file": path, "file_format": "safetensors", "size": os.path.getsize(path),
             "wrapper": None, "other_entries": [], "stripped_prefix": stripped,
             "stubbed_globals": [], "trusted": False, "metadata": metadata,
             "structure": [{"key": "(top level)", "kind": "flat tensor map", "items": len(infos),
                            "tensors": len(infos),
                            "tensor_bytes": sum(tensor_bytes(d, s) for d, s in infos.values())}]}
    values: Optional[Dict[str, Any]] = None
    unread: List[str] = []
    if health:
        from ..io.arrays import safetensors_arrays

        raw, unread = safetensors_arrays(path, layout)
        values = {k[len(stripped):]: v for k, v in raw.items()}
        unread = [k[len(stripped):] for k in unread]
    return facts, infos, values, unread


def _torch(path: str, ema: bool, trust: bool, health: bool, strict: bool):
    """(facts, tensor listing, values or None, the unwrapping problem or None) of a torch file;
    ``strict``: a file that holds no state dict is an error, not a description."""
    from ..io.arrays import ArrayView
    from ..io.contents import flat_tensors, structure
    from ..io.read import as_checkpoint, load_object, unwrap

    fmt, obj, metadata, stubbed, trusted = load_object(path, trust=trust)
    facts = {"file": path, "file_format": fmt, "size": os.path.getsize(path),
             "structure": structure(obj), "stubbed_globals": list(stubbed),
             "trusted": trusted, "metadata": metadata}
    try:
        sd, _, _ = unwrap(obj, ema=ema, path=path)
        if not all(isinstance(k, str) for k in sd):
            raise BadInput(f"{path}: state dict keys are not all strings")
    except BadInput as exc:
        if ema or strict:
            raise
        tensors = flat_tensors(obj)
        facts.update(wrapper=None, other_entries=[], stripped_prefix="")
        return facts, tensor_info(tensors), ArrayView(tensors) if health else None, exc.message
    ck = as_checkpoint(path, fmt, obj, metadata, stubbed, ema=ema, trust=trusted)
    facts.update(wrapper=ck.wrapper, other_entries=sorted(map(str, ck.extras)),
                 stripped_prefix=ck.stripped_prefix, ema_note=ck.ema_note)
    return facts, tensor_info(ck.state_dict), ArrayView(ck.state_dict) if health else None, None


def inspect_file(path: str, *, ema: bool = False, trust: bool = False,
                 prefix: Optional[str] = None, arch=None, arch_source: Optional[str] = None,
                 health: bool = True, blocks_file: Optional[str] = None) -> Dict[str, Any]:
    """Describe ``path`` (and, with ``health``, examine its numbers) as a JSON-able dict.

    ``arch`` (an ArchSpec from ``--config``, named by ``arch_source``) must match the detected
    network; the report then uses its name.  A file without a MobileOne is described, not
    refused, unless ``prefix`` or ``arch`` asked for one; its re-parameterisable blocks are
    listed per family and block type (``blocks_file``: patterns of ``--blocks`` as well)."""
    from ..io.remote import local_path
    from ..runtimes import runtime_for

    path = local_path(os.fspath(path))  # a name (apple:s0, hf-hub:...): its checked cache file
    wanted = prefix is not None or arch is not None  # the user asked for a MobileOne
    if runtime_for(path) == "onnx":
        return _onnx(path)
    if runtime_for(path) is not None:
        from .inspect_artifact import inspect_artifact

        return inspect_artifact(path)
    from ..io.read import sniff_format

    if sniff_format(path) == "safetensors":
        facts, infos, values, unread = _safetensors(path, ema, health)
        problem = None
    else:
        facts, infos, values, problem = _torch(path, ema, trust, health, wanted)
        unread = []
    unwrapped = problem is None  # a state dict was found (else: why not, in problem)
    det = damaged = None
    if problem is None:
        try:
            det = detect_layout(infos, prefix=prefix, where=path)
        except BadInput as exc:
            if wanted:
                raise  # not finding what the user asked for is an error
            problem = exc.message
            damaged = exc if isinstance(exc, Damaged) else None
    if problem is not None and problem.startswith(f"{path}: "):
        problem = problem[len(path) + 2:]
    if det is not None and arch is not None:
        det.arch = expect_arch(arch, det.arch, det.form, where=path,
                               source=arch_source or "--arch", compare_head=True)
    if det is not None:
        from ..io.contents import tensor_totals

        report = describe(infos, det, **facts, **tensor_totals(infos))
    elif damaged is not None:
        report = _damaged(infos, damaged, **facts)
    else:
        patterns = None
        if blocks_file is not None:
            from .convert_generic import generic_patterns

            patterns = generic_patterns(blocks_file)
        assert problem is not None  # why no MobileOne was found
        report = _not_mobileone(infos, problem, unwrapped=unwrapped, patterns=patterns, **facts)
    report["health"] = None
    if health:
        from ..check.health import checkpoint_health

        report["health"] = checkpoint_health(values, infos, det, unread=unread)
        if damaged is not None:  # what convert refuses is a fault of the file, said first
            h = report["health"]
            h["faults"] = [f"damaged MobileOne: {p}" for p in damaged.problems] + h["faults"]
            h["verdict"] = "faults"
    return report


def _damaged(infos: Dict[str, TensorInfo], exc: Damaged, **facts: Any) -> Dict[str, Any]:
    """A known MobileOne that convert would refuse: what it is, and what is damaged (no
    --generic advice: the network is known, its file is broken)."""
    from ..io.contents import tensor_totals

    det = exc.detection
    return {"kind": "damaged", **facts, "layout": det.layout, "form": det.form,
            "variant": det.arch.name, "num_classes": det.arch.num_classes,
            "prefix": det.prefix, "damage": list(exc.problems), "keys": len(infos),
            **tensor_totals(infos), "hint": None}
