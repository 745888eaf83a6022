"""Real images for ``verify --images``: the standard ImageNet evaluation preprocessing.

Reference section 6: resize the short edge to 256 (bilinear), centre-crop 224, scale to [0, 1],
normalise with the ImageNet mean and std.  For another crop size the resize keeps the same
256/224 ratio.  Pillow is an optional extra (``pip install 'mobileone-cli[images]'``).
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from ..errors import BadInput

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "list_images", "preprocess",
           "load_images", "PILLOW_HINT"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
RESIZE_RATIO = 256 / 224
PILLOW_HINT = "pip install 'mobileone-cli[images]'   (or: pip install pillow)"


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise BadInput("--images needs Pillow, which is not installed", hint=PILLOW_HINT) from None
    return Image


def list_images(folder: str) -> List[str]:
    """PNG/JPEG files directly inside ``folder``, sorted by name."""
    if not os.path.isdir(folder):
        raise BadInput(f"{folder}: not a directory (--images takes a folder of PNG/JPEG files)")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise BadInput(f"{folder}: no .png/.jpg/.jpeg files in this folder")
    return files


def _resized_size(width: int, height: int, short: int) -> Tuple[int, int]:
    """(w, h) with the short edge = ``short`` and the long edge scaled (truncated)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def preprocess(image, crop: Tuple[int, int] = (224, 224)):
    """A PIL image -> normalised float32 tensor (3, crop_h, crop_w)."""
    import torch

    Image = _pillow()
    crop_h, crop_w = crop
    short = int(round(min(crop_h, crop_w) * RESIZE_RATIO))
    image = image.convert("RGB")
    size = _resized_size(image.width, image.height, short)
    if size != (image.width, image.height):
        image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    if w < crop_w or h < crop_h:
        raise BadInput(f"image of {w}x{h} after resizing is smaller than the {crop_w}x{crop_h} crop")
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    t = data.reshape(crop_h, crop_w, 3).permute(2, 0, 1).to(torch.float32) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).reshape(3, 1, 1)
    return (t - mean) / std


def load_images(folder: str, crop: Sequence[int] = (224, 224)):
    """(batch tensor (N, 3, h, w), file names) of every image in ``folder``."""
    import torch

    Image = _pillow()
    files = list_images(folder)
    out = []
    for path in files:
        try:
            with Image.open(path) as im:
                out.append(preprocess(im, (int(crop[0]), int(crop[1]))))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadInput(f"{path}: cannot read image ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'})") from None
    return torch.stack(out), [os.path.basename(p) for p in files]
