"""What the tensors of a loaded torch file claim, bounded by what the file stores.

A torch tensor is a view: a shape, strides and an offset into a storage.  Loading reads only the
storages, which the zip directory check bounds by the file's size; the shapes are free.  A
1.6 KB file can therefore hold a stride-0 (broadcast) tensor of 2**40 elements over 4 stored
bytes, or a hundred thousand keys viewing one storage, and every later computation (health
statistics, NaN checks, fusion, a copy) materialises what the views claim.

:func:`check_claims` refuses such a file before anything is computed from it: the bytes that
the tensors claim (elements x item size, summed over every reference to a tensor) may exceed
the bytes of their distinct storages by at most the larger of ``MAX_VIEW_BYTES`` and the stored
bytes themselves (tied weights claim theirs twice).  Each tensor must also lie inside its storage.
Work here is one pass over the tensors' metadata.  Torch is imported only inside the functions.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Mapping, Tuple

from ..errors import BadInput, printable
from ..rules.limits import MAX_VIEW_BYTES

__all__ = ["check_claims", "tensors_in", "claimed_bytes", "MAX_WALK"]

MAX_DEPTH = 8  # container levels walked below the top
MAX_WALK = 200_000  # container items visited in all (as io.contents walks them)


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def tensors_in(obj: Any) -> Iterator[Tuple[str, Any]]:
    """(dotted path, tensor) of every tensor reference below ``obj``: at most ``MAX_WALK``
    container items, ``MAX_DEPTH`` levels (the bounds of the tool's other walks)."""
    import torch

    budget = [MAX_WALK]

    def walk(x: Any, path: str, depth: int) -> Iterator[Tuple[str, Any]]:
        if isinstance(x, torch.Tensor):
            yield path, x
            return
        if depth > MAX_DEPTH:
            return
        if isinstance(x, Mapping):
            items: Iterable = x.items()
        elif isinstance(x, (list, tuple)):
            items = enumerate(x)
        else:
            return
        for k, v in items:
            budget[0] -= 1
            if budget[0] < 0:
                return
            yield from walk(v, f"{path}.{k}" if path else str(k), depth + 1)

    yield from walk(obj, "", 0)


def claimed_bytes(t: Any) -> int:
    """Elements x item size of ``t``: what computing on it materialises."""
    n = 1
    for d in t.shape:
        n *= int(d)
    return n * t.element_size()


def _span(t: Any) -> int:
    """Bytes of its storage that a strided tensor reaches (offset + extent), 0 when empty."""
    if any(int(d) == 0 for d in t.shape):
        return 0
    last = int(t.storage_offset()) + sum((int(d) - 1) * int(s)
                                         for d, s in zip(t.shape, t.stride()))
    return (last + 1) * t.element_size()


def check_claims(tensors: Iterable[Tuple[str, Any]], where: str) -> None:
    """BadInput when the tensors claim more than the file stores (see the module doc).

    Meta, sparse and non-CPU tensors are left to :func:`sanity.check_tensor_storage`: they are
    refused before any computation, and hold no storage to materialise from."""
    import torch

    stored: Dict[Tuple[int, int], int] = {}
    claimed = 0
    worst: List[Any] = [None, 0, 0]  # key, claimed, its storage's bytes
    for key, t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if t.layout != torch.strided or t.is_meta or t.device.type != "cpu":
            continue
        storage = t.untyped_storage()
        size = int(storage.nbytes())
        if any(int(s) < 0 for s in t.stride()) or _span(t) > size:
            raise BadInput(f"{where}: tensor {printable(key)!r} reaches beyond its storage "
                           f"({size:,} bytes); the file is corrupt")
        stored[(storage.data_ptr(), size)] = size
        mine = claimed_bytes(t)
        claimed += mine
        if mine - size > worst[1] - worst[2]:
            worst = [key, mine, size]
    total = sum(stored.values())
    allowed = total + max(MAX_VIEW_BYTES, total)
    if claimed > allowed:
        key, mine, size = worst
        raise BadInput(f"{where}: its tensors claim {_human(claimed)} over {_human(total)} of "
                       f"stored data, more than the {_human(allowed)} allowed (tensor "
                       f"{printable(key)!r} views {_human(size)} as {_human(mine)}: a broadcast "
                       f"or overlapping view)",
                       hint="a checkpoint stores each weight once; this file was crafted or "
                            "damaged")
