"""Real images for ``verify --images``: a flat folder, run through the tool's one preprocessing
(:mod:`mobileone_cli.data.pipeline`, mmpretrain's MobileOne test pipeline; for another
``--input-size`` the crop is that size and the resize keeps the 256:224 ratio).  Work is bounded
before any pixel is decoded: each file by its header there (``MAX_IMAGE_PIXELS``,
``MAX_IMAGE_ASPECT``), the folder here (at most ``MAX_IMAGES`` files, one check's batch).
Pillow is an optional extra.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

from ..data.pipeline import (
    IMAGE_EXTENSIONS,
    PILLOW_HINT,
    Preprocessing,
    check_image_size,
    load_tensor,
    make_preprocessing,
    pillow,
    transform,
)
from ..data.walk import Walker
from ..errors import BadInput
from ..rules.limits import MAX_IMAGES

__all__ = ["IMAGE_EXTENSIONS", "list_images", "preprocess", "preprocessing_for", "load_images",
           "check_image_size", "PILLOW_HINT"]


def list_images(folder: str, notes: Optional[List[str]] = None) -> List[str]:
    """Image files directly inside ``folder``, sorted by name: regular files inside it only
    (the walker of ``eval``, :mod:`mobileone_cli.data.walk`); what it skipped is appended to
    ``notes``."""
    if not os.path.isdir(folder):
        raise BadInput(f"{folder}: not a directory (--images takes a folder of PNG/JPEG files)")
    walker = Walker(folder)
    files = [os.path.join(folder, f) for f in walker.images(recursive=False)]
    skipped = walker.skips.note()
    if not files:
        raise BadInput(f"{folder}: no .png/.jpg/.jpeg (or {', '.join(IMAGE_EXTENSIONS[3:])}) "
                       f"files in this folder" + (f" ({skipped})" if skipped else ""))
    if len(files) > MAX_IMAGES:
        raise BadInput(f"{folder}: {len(files):,} images; one check reads at most {MAX_IMAGES:,}",
                       hint="copy a sample of them into another folder (`mobileone eval` "
                            "streams any number)")
    if skipped is not None and notes is not None:
        notes.append(f"--images {folder}: {skipped}")
    return files


def preprocessing_for(crop: Sequence[int]) -> Preprocessing:
    """The default pipeline cropping to ``crop`` (H, W)."""
    return make_preprocessing(crop=(int(crop[0]), int(crop[1])))


def preprocess(image, crop: Sequence[int] = (224, 224)):
    """A decoded PIL image -> normalised float32 tensor (3, crop_h, crop_w)."""
    return transform(image if image.mode == "RGB" else image.convert("RGB"),
                     preprocessing_for(crop))


def load_images(folder: str, crop: Sequence[int] = (224, 224),
                preprocessing: Optional[Preprocessing] = None,
                notes: Optional[List[str]] = None):
    """(batch tensor (N, 3, h, w), file names) of every image in ``folder``; an unreadable
    image is bad input here (the check needs every image it was given).  Entries skipped
    (not regular files inside ``folder``) are named in ``notes``."""
    import torch

    pillow()  # the install hint before anything else
    files = list_images(folder, notes)
    p = preprocessing or preprocessing_for(crop)
    out = [load_tensor(path, p, folder) for path in files]
    return torch.stack(out), [os.path.basename(f) for f in files]
