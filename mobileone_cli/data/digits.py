"""The held-out digits as the tensors the trained networks see (:mod:`..assets.digits`).

:func:`to_network_input` is the one preprocessing of the digits: ``tools/train_digits.py`` trains
with it and everything that checks the shipped networks evaluates with it.  It equals, bit for bit,
``mobileone eval`` with ``assets.digits.EVAL_OPTIONS`` on PNGs of the 8x8 pixels (tests prove it).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..assets import digits as assets

__all__ = ["to_network_input", "heldout_pixels", "heldout_images"]


def to_network_input(pixels) -> torch.Tensor:
    """uint8 (N, 8, 8) on 0..255 -> float32 (N, 3, SIZE, SIZE): each pixel repeated SCALE x SCALE
    times, grey copied to RGB, ``(x - MEAN) / STD``."""
    x = torch.as_tensor(np.asarray(pixels, dtype=np.uint8)).to(torch.float32)
    x = x.repeat_interleave(assets.SCALE, dim=1).repeat_interleave(assets.SCALE, dim=2)
    mean = torch.tensor(assets.MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(assets.STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x.unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std).contiguous()


def heldout_pixels() -> Tuple[np.ndarray, np.ndarray]:
    """The shipped held-out images: uint8 (N, 8, 8) pixels on 0..255 and int64 (N,) labels."""
    with np.load(assets.HELDOUT, allow_pickle=False) as f:
        return np.asarray(f["pixels"], dtype=np.uint8), np.asarray(f["labels"], dtype=np.int64)


def heldout_images(limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The held-out images as network input (float32 (N, 3, 32, 32)) and their labels (int64 (N,));
    ``limit`` takes the first N."""
    pixels, labels = heldout_pixels()
    if limit is not None:
        pixels, labels = pixels[:limit], labels[:limit]
    return to_network_input(pixels), torch.from_numpy(labels)


def write_heldout_pngs(folder: str) -> int:
    """The held-out images as 8x8 greyscale PNGs in class folders ``folder/0`` .. ``folder/9``
    (what ``mobileone eval`` reads; with ``assets.digits.EVAL_OPTIONS`` it sees exactly
    :func:`heldout_images`).  Returns the number of files written.  Needs Pillow."""
    import os

    from .pipeline import pillow

    Image = pillow()
    pixels, labels = heldout_pixels()
    with np.load(assets.HELDOUT, allow_pickle=False) as f:
        index = np.asarray(f["index"])
    for label in range(10):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
    for px, label, i in zip(pixels, labels, index):
        Image.fromarray(px, "L").save(os.path.join(folder, str(int(label)), f"{int(i):04d}.png"))
    return len(labels)
