"""Preprocessed images in batches, decoded by a few threads ahead of the model, in order.

Pillow decodes and resizes with the GIL released, so threads overlap decoding with the forward
passes.  At most ``2 * batch + workers`` images are in flight: memory is bounded by the batch
size, never by the number of images, and decoding by the shared pixel budget
(:mod:`.budget`), never by the number of workers.  An image that cannot be used is handed to
``unreadable`` and skipped; one that fails for lack of memory stops the stream.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

from ..errors import BadInput
from ..rules.limits import MAX_WORKERS
from .folders import Item
from .pipeline import ImageError, Preprocessing, load_tensor

__all__ = ["Batch", "stream_batches", "default_workers"]


@dataclass
class Batch:
    """Images (B, 3, H, W) float32, their labels (B,) int64 and their names."""

    x: Any  # torch.Tensor
    labels: Any  # torch.Tensor
    names: List[str]


def default_workers() -> int:
    """Decoding threads: the cores, at most 8 (JPEG decoding saturates well before)."""
    return max(1, min(8, os.cpu_count() or 1))


def _load(item: Item, p: Preprocessing, root: Optional[str]) -> Tuple[object, Optional[str]]:
    try:
        return load_tensor(item.path, p, root), None
    except ImageError as exc:
        return None, exc.message


def stream_batches(items: Iterable[Item], p: Preprocessing, batch: int, *,
                   workers: Optional[int] = None,
                   unreadable: Optional[Callable[[Item, str], None]] = None,
                   root: Optional[str] = None) -> Iterator[Batch]:
    """Batches of ``batch`` preprocessed images from ``items``, in order; ``workers=0`` decodes
    on the calling thread.  ``root``: only regular files inside it are read (DATA).  An image
    that fails for lack of memory stops the stream (DecodeOutOfMemory), whatever the thread."""
    import torch

    workers = default_workers() if workers is None else workers
    if not 0 <= workers <= MAX_WORKERS:
        raise BadInput(f"--workers {workers}: must be between 0 and {MAX_WORKERS}")
    xs: List[Any] = []
    labels: List[int] = []
    names: List[str] = []

    def take(item: Item, result: Tuple[object, Optional[str]]) -> Optional[Batch]:
        tensor, error = result
        if error is not None:
            if unreadable is not None:
                unreadable(item, error)
            return None
        xs.append(tensor)
        labels.append(item.label)
        names.append(item.name)
        if len(xs) < batch:
            return None
        return flush()

    def flush() -> Batch:
        out = Batch(torch.stack(xs), torch.tensor(labels, dtype=torch.int64), list(names))
        xs.clear()
        labels.clear()
        names.clear()
        return out

    source = iter(items)
    if workers == 0:
        for item in source:
            ready = take(item, _load(item, p, root))
            if ready is not None:
                yield ready
    else:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mobileone-decode")
        pending: deque = deque()
        ahead = 2 * batch + workers
        try:
            while True:
                while len(pending) < ahead:
                    new = next(source, None)
                    if new is None:
                        break
                    pending.append((new, pool.submit(_load, new, p, root)))
                if not pending:
                    break
                item, future = pending.popleft()
                ready = take(item, future.result())
                if ready is not None:
                    yield ready
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if xs:
        yield flush()
