"""What a checkpoint file holds, as plain data: the library side of ``mobileone inspect``.

A ``.safetensors`` file is read from its JSON header alone, so inspecting one never imports torch
(nor reads the weights).  Torch files are loaded the safe way (weights-only, foreign objects as
placeholders) unless the caller passes ``trust``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

from .checkpoint import read_safetensors_header, sniff_format, strip_prefix
from .detect import Detection, TensorInfo, detect_layout
from .errors import BadInput
from .layouts import param_count

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
    fmt = sniff_format(path)
    facts: Dict[str, Any] = {"file": path, "file_format": fmt, "size": os.path.getsize(path)}
    stubbed: List[str] = []
    if fmt == "safetensors":
        if ema:
            raise BadInput(f"{path}: --ema given but a safetensors file holds one flat state dict")
        tensors, metadata = read_safetensors_header(path)
        tensors, stripped = strip_prefix(tensors)
        wrapper, top_level, trusted = None, [], False
    else:
        from .checkpoint import load_checkpoint
        from .detect import tensor_info

        ck = load_checkpoint(path, ema=ema, trust=trust)
        tensors = tensor_info(ck.state_dict)
        metadata, stripped, wrapper = ck.metadata, ck.stripped_prefix, ck.wrapper
        top_level, stubbed, trusted = sorted(map(str, ck.extras)), ck.stubbed, ck.trusted
    facts.update(wrapper=wrapper, other_entries=top_level, stripped_prefix=stripped,
                 stubbed_globals=stubbed, trusted=trusted, metadata=metadata)
    det = detect_layout(tensors, prefix=prefix, where=path)
    if arch is not None:
        from .config import expect_arch

        det.arch = expect_arch(arch, det.arch, det.form, where=path,
                               source=arch_source or "--arch", compare_head=True)
    return describe(tensors, det, **facts)
