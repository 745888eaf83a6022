"""Test helpers: image files written with Pillow, and an independent implementation of
mmpretrain's MobileOne test pipeline (numpy, integer arithmetic) to check the tool's against.

The reference follows mmcv 2.2 / mmpretrain 1.2 source, not the tool's code:
  ResizeEdge(short):  w < h -> (scale, int(scale * h / w)), else (int(scale * w / h), scale),
                      computed here exactly with integer floor division;
  CenterCrop:         y1 = int(round((H - ch) / 2.)) with Python's round (half to even),
                      computed here from the parity of H - ch;
  ClsDataPreprocessor: float32 (x - mean) / std on 0..255 RGB.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def pattern(w: int, h: int, salt: int = 0) -> np.ndarray:
    """A deterministic RGB image with edges and fine detail (no RNG: stable everywhere)."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 7 + y * 3 + salt * 31) % 256
    g = (x * y // 5 + salt * 17) % 256
    b = np.where(((x // 4) + (y // 3) + salt) % 2 == 0, 40 + salt % 50, 220)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def write_image(path: str, arr: np.ndarray, **save) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, **save)
    return path


def half_to_even_offset(size: int, crop: int) -> int:
    """round((size - crop) / 2) with ties to the even integer, from the parity alone."""
    d = size - crop
    k = d // 2
    if d % 2 == 0:
        return k
    return k if k % 2 == 0 else k + 1  # d / 2 = k + 0.5


def resized(w: int, h: int, short: int) -> Tuple[int, int]:
    if w < h:
        return short, (short * h) // w
    return (short * w) // h, short


def reference(arr: np.ndarray, resize: int = 256, crop: Tuple[int, int] = (224, 224),
              interpolation: str = "bilinear", mean: Sequence[float] = MEAN,
              std: Sequence[float] = STD) -> np.ndarray:
    """The pipeline on a decoded uint8 HxWx3 RGB array -> float32 (3, ch, cw)."""
    from PIL import Image

    h, w = arr.shape[:2]
    nw, nh = resized(w, h, resize)
    filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}[interpolation]
    img = np.asarray(Image.fromarray(arr).resize((nw, nh), filt))
    ch, cw = crop
    top, left = half_to_even_offset(nh, ch), half_to_even_offset(nw, cw)
    out = img[top:top + ch, left:left + cw].astype(np.float32)
    out = (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def reference_file(path: str, **kw) -> np.ndarray:
    """Decode a plain 8-bit RGB/L file with Pillow and run :func:`reference`."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return reference(arr, **kw)


def class_tree(root: str, per_class: Sequence[int], sizes: Sequence[Tuple[int, int]],
               jpeg_every: int = 2) -> Dict[str, List[Tuple[str, int]]]:
    """class folders c0, c1, ... holding ``per_class[c]`` images each (PNG, every
    ``jpeg_every``-th a JPEG); returns {'items': [(relative name, label), ...]} in the order
    the tool walks them (sorted folders, sorted names)."""
    items = []
    n = 0
    for c, count in enumerate(per_class):
        for i in range(count):
            w, h = sizes[n % len(sizes)]
            ext = "jpg" if jpeg_every and i % jpeg_every == 1 else "png"
            rel = os.path.join(f"c{c}", f"img{i:02d}.{ext}")
            write_image(os.path.join(root, rel), pattern(w, h, salt=n),
                        **({"quality": 90} if ext == "jpg" else {}))
            items.append((rel, c))
            n += 1
    return {"items": items}
