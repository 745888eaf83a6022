"""Pickled metadata carried from an input into an output (mmpretrain's ``meta``), made plain.

The output must load with weights-only loading and nothing else, so placeholders (foreign objects
never loaded) become ``'<not loaded: NAME>'`` strings, numpy values become Python numbers and
lists, and container subclasses become plain ``dict``/``list``/``tuple``/``set``.

The walk visits each object once: shared and cyclic references in the input stay shared and
cyclic in the copy (the same object graph), so a ``meta`` that names one list 2**60 times through
shared references costs as much as the list.  The number of objects and the nesting depth are
bounded (``rules.limits``); beyond them the file is refused (exit 2).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Tuple

from ..errors import BadInput
from ..rules.limits import MAX_META_DEPTH, MAX_META_ITEMS
from .safeload import Placeholder

__all__ = ["plain_data"]


def plain_data(obj: Any, *, where: str = "checkpoint") -> Any:
    """A plain copy of ``obj`` with the same object graph (see the module docstring)."""
    return _Copy(where).copy(obj, 0)


class _Copy:
    def __init__(self, where: str) -> None:
        self.where = where
        # id(original) -> (original, copy); the original is held so that its id stays unique
        self.memo: Dict[int, Tuple[Any, Any]] = {}
        self.items = 0

    def _remember(self, obj: Any, out: Any) -> Any:
        self.memo[id(obj)] = (obj, out)
        return out

    def copy(self, obj: Any, depth: int) -> Any:
        hit = self.memo.get(id(obj))
        if hit is not None:
            return hit[1]
        self.items += 1
        if self.items > MAX_META_ITEMS:
            raise BadInput(f"{self.where}: its metadata holds more than {MAX_META_ITEMS:,} "
                           f"objects; "
                           f"refusing to copy it into the output")
        if depth > MAX_META_DEPTH:
            raise BadInput(f"{self.where}: its metadata is nested more than {MAX_META_DEPTH} "
                           f"levels "
                           f"deep; refusing to copy it into the output")
        if isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder)):
            return self._remember(obj, f"<not loaded: {obj.global_name}>")
        if _leaf(obj):
            return obj
        if isinstance(obj, dict):
            out: Any = OrderedDict() if isinstance(obj, OrderedDict) else {}
            self._remember(obj, out)
            for k, v in list(obj.items()):
                out[self.copy(k, depth + 1)] = self.copy(v, depth + 1)
            return out
        if isinstance(obj, list):
            out = self._remember(obj, [])
            out.extend([self.copy(v, depth + 1) for v in list(obj)])
            return out
        if isinstance(obj, (tuple, set, frozenset)):
            # built after its items: a cycle through it is closed by the list or dict it
            # passes through, and the first copy made is the one kept
            items: List[Any] = [self.copy(v, depth + 1) for v in obj]
            hit = self.memo.get(id(obj))
            if hit is not None:
                return hit[1]
            return self._remember(obj, set(items) if isinstance(obj, (set, frozenset))
                                  else tuple(items))
        if type(obj).__module__.split(".")[0] == "numpy":
            return self._remember(obj, self.copy(_numpy_plain(obj, self.where), depth))
        return self._remember(obj, f"<not loaded: {type(obj).__module__}."
                                   f"{type(obj).__qualname__}>")


def _leaf(obj: Any) -> bool:
    """Values weights-only loading reads back as they are."""
    if obj is None or type(obj) in (str, bytes, bytearray, int, float, bool, complex):
        return True
    import torch

    return isinstance(obj, (torch.Tensor, torch.Size, torch.dtype, torch.device))


def _numpy_plain(obj: Any, where: str) -> Any:
    """A numpy scalar as a Python value, an array as nested lists (its size counted first)."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.size > MAX_META_ITEMS:
            raise BadInput(f"{where}: its metadata holds an array of {obj.size:,} values; "
                           f"refusing to copy it into the output")
        return obj.tolist()
    return f"<not loaded: {type(obj).__module__}.{type(obj).__qualname__}>"
