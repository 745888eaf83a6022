"""What any checkpoint holds, MobileOne or not: its top-level structure and every tensor in it.

``inspect`` describes files it cannot read as a MobileOne (a ResNet, a FastViT, an optimizer
dump) instead of refusing them.  The walk is bounded (depth and item count), so a hostile pickle
of deeply nested or huge containers costs no more than reading it did.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from ..errors import BadInput
from ..rules.limits import MAX_WALK_DEPTH, MAX_WALK_ITEMS
from .detect import TensorInfo, tensor_info
from .read import Checkpoint

__all__ = ["Listing", "list_tensors", "structure", "flat_tensors", "tensor_totals"]



def _is_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "dtype") \
        and hasattr(x, "shape")


def _walk(obj: Any, path: str, depth: int, budget: List[int]) -> Iterator[Tuple[str, Any]]:
    """(dotted path, tensor) of every tensor below ``obj``, within the bounds."""
    if _is_tensor(obj):
        yield path, obj
        return
    if depth > MAX_WALK_DEPTH:
        return
    items: Iterable[Tuple[Any, Any]]
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return
    for k, v in items:
        budget[0] -= 1
        if budget[0] < 0:
            return
        yield from _walk(v, f"{path}.{k}" if path else str(k), depth + 1, budget)


def flat_tensors(obj: Any, budget: Optional[List[int]] = None) -> Dict[str, Any]:
    """{dotted path: tensor} of every tensor in a loaded object (a walk of at most
    MAX_WALK_ITEMS container items in all, shared through ``budget`` between calls)."""
    return dict(_walk(obj, "", 0, budget if budget is not None else [MAX_WALK_ITEMS]))


def tensor_totals(infos: Mapping[str, TensorInfo]) -> Dict[str, Any]:
    """Count, storage bytes and per-dtype counts of a tensor listing."""
    from .arrays import tensor_bytes
    from .detect import NOT_A_TENSOR

    dtypes: Dict[str, int] = {}
    total = count = 0
    for dtype, shape in infos.values():
        if dtype.endswith(NOT_A_TENSOR):
            continue
        count += 1
        total += tensor_bytes(dtype, shape)
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    return {"tensors": count, "tensor_bytes": total, "dtypes": dict(sorted(dtypes.items()))}


def _kind(value: Any) -> str:
    if _is_tensor(value):
        dtype, shape = tensor_info({"x": value})["x"]
        return f"tensor {dtype} {list(shape)}"
    if isinstance(value, Mapping):
        return "dict"
    if isinstance(value, (list, tuple)):
        return type(value).__name__
    if isinstance(value, (str, bytes)):
        text = repr(value)
        return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
    if isinstance(value, (bool, int, float)) or value is None:
        return f"{type(value).__name__} {value!r}"
    return getattr(type(value), "global_name", None) or type(value).__name__


def structure(obj: Any) -> List[Dict[str, Any]]:
    """One row per top-level entry: key, kind, item count, tensors and their bytes below it.
    Tensors stored directly at the top level (a bare state dict) make one row, '(tensors)'."""
    if isinstance(obj, Mapping):
        entries = list(obj.items())
    else:
        entries = [("(top level)", obj)]
    budget = [MAX_WALK_ITEMS]  # one walk for the whole file: shared references cannot multiply it
    loose = {str(k): v for k, v in entries[:MAX_WALK_ITEMS] if _is_tensor(v)}
    rows = []
    if loose:
        totals = tensor_totals(tensor_info(loose))
        rows.append({"key": "(tensors)", "kind": "state dict" if len(loose) == len(entries)
                     else "tensors", "items": len(loose), "tensors": totals["tensors"],
                     "tensor_bytes": totals["tensor_bytes"]})
    for key, value in entries[:MAX_WALK_ITEMS]:
        if _is_tensor(value):
            continue
        tensors = flat_tensors(value, budget)
        totals = tensor_totals(tensor_info(tensors))
        size = len(value) if isinstance(value, (Mapping, list, tuple)) else None
        rows.append({"key": str(key), "kind": _kind(value), "items": size,
                     "tensors": totals["tensors"], "tensor_bytes": totals["tensor_bytes"]})
    return rows


@dataclass
class Listing:
    """What a checkpoint file holds, as ``{key: (dtype, shape)}`` plus how it was found.

    A ``.safetensors`` file is listed from its JSON header alone (no torch, no payload read);
    a torch file is loaded safely and ``checkpoint`` keeps it for callers that need tensors.
    """

    path: str
    file_format: str
    tensors: Dict[str, Tuple[str, Tuple[int, ...]]]
    metadata: Dict[str, str] = field(default_factory=dict)
    checkpoint: Optional[Checkpoint] = None
    stripped_prefix: str = ""

    @property
    def notes(self) -> List[str]:
        from .read import loading_notes

        if self.checkpoint is not None:
            return loading_notes(self.checkpoint)
        return [f"stripped key prefix {self.stripped_prefix!r}"] if self.stripped_prefix else []


def list_tensors(path: str, *, ema: bool = False, trust: bool = False) -> Listing:
    """The tensor listing of ``path`` (see :class:`Listing`)."""
    from .read import load_checkpoint, read_safetensors_header, sniff_format, strip_prefix

    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        if ema:
            raise BadInput(f"{path}: --ema given but a safetensors file holds one flat state dict")
        header, metadata = read_safetensors_header(path)
        tensors, stripped = strip_prefix(dict(header))
        return Listing(path, fmt, tensors, metadata, stripped_prefix=stripped)
    ck = load_checkpoint(path, ema=ema, trust=trust)
    return Listing(path, fmt, tensor_info(ck.state_dict), ck.metadata, ck,
                   stripped_prefix=ck.stripped_prefix)
