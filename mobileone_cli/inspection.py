"""What a checkpoint file holds, as plain data: the library side of ``mobileone inspect``.

A ``.safetensors`` file is read from its JSON header alone, so inspecting one never imports torch
(nor reads the weights).  Torch files are loaded the safe way (weights-only, foreign objects as
placeholders) unless the caller passes ``trust``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

from .io.detect import Detection, TensorInfo, detect_layout
from .io.read import list_tensors
from .spec.arch import expect_arch
from .spec.layouts import param_count

__all__ = ["inspect_file", "describe"]


def _elements(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def describe(tensors: Mapping[str, TensorInfo], det: Detection, **file_facts: Any
             ) -> Dict[str, Any]:
    """The inspect report of a detected MobileOne; ``file_facts`` are merged in first."""
    entries = det.entries()
    ours = len(entries)
    return {
        **file_facts,
        "layout": det.layout,
        "form": det.form,
        "variant": det.arch.name,
        "num_classes": det.arch.num_classes,
        "prefix": det.prefix,
        "implied_root": det.implied_root,
        "dtype": det.dtype,
        "keys": len(tensors),
        "mobileone_keys": ours,
        "params": param_count(entries),
        "tensor_elements": sum(_elements(shape) for _, shape in tensors.values()),
        "unknown_keys": list(det.extra_keys),
        "arch": det.arch.to_dict(),
    }


def inspect_file(path: str, *, ema: bool = False, trust: bool = False,
                 prefix: Optional[str] = None, arch=None,
                 arch_source: Optional[str] = None) -> Dict[str, Any]:
    """Detect everything about the MobileOne in ``path`` and return it as a JSON-able dict.

    ``arch`` (an ArchSpec from ``--config``, named by ``arch_source``) must match the detected
    network; the report then uses its name."""
    listing = list_tensors(path, ema=ema, trust=trust)
    ck = listing.checkpoint
    facts: Dict[str, Any] = {
        "file": listing.path, "file_format": listing.file_format,
        "size": os.path.getsize(listing.path),
        "wrapper": ck.wrapper if ck else None,
        "other_entries": sorted(map(str, ck.extras)) if ck else [],
        "stripped_prefix": listing.stripped_prefix,
        "stubbed_globals": list(ck.stubbed) if ck else [],
        "ema_note": ck.ema_note if ck else "",
        "trusted": bool(ck and ck.trusted), "metadata": listing.metadata}
    det = detect_layout(listing.tensors, prefix=prefix, where=listing.path)
    if arch is not None:
        det.arch = expect_arch(arch, det.arch, det.form, where=listing.path,
                               source=arch_source or "--arch", compare_head=True)
    return describe(listing.tensors, det, **facts)
