"""Real images for ``verify --images``: the standard ImageNet evaluation preprocessing.

Reference section 6: resize the short edge to 256 (bilinear), centre-crop 224, scale to [0, 1],
normalise with the ImageNet mean and std.  For another crop size the resize keeps the same
256/224 ratio.  Pillow is an optional extra (``pip install 'mobileone-cli[images]'``).

Work is bounded by spec/limits.py before any pixel is decoded (the size is in the file's
header): at most MAX_IMAGE_PIXELS per file, sides at most MAX_IMAGE_ASPECT to 1 (the resize
keeps the aspect ratio, so a 118-byte 1x20000 PNG would otherwise become a 256 x 5,120,000
image), at most MAX_IMAGES files.  Pillow's own decompression-bomb warning is not shown: the
tool's limit, lower than Pillow's, speaks first and in one line.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Sequence, Tuple

from ..errors import BadInput
from ..spec.limits import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, MAX_IMAGES

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "list_images", "preprocess",
           "load_images", "check_image_size", "PILLOW_HINT"]

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
    if len(files) > MAX_IMAGES:
        raise BadInput(f"{folder}: {len(files):,} images; one check reads at most {MAX_IMAGES:,}",
                       hint="copy a sample of them into another folder")
    return files


def check_image_size(path: str, width: int, height: int) -> None:
    """Refuse, from the header's size alone, an image too large or too elongated to check."""
    if width < 1 or height < 1:
        raise BadInput(f"{path}: the image is {width}x{height} pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise BadInput(f"{path}: the image is {width}x{height} ({width * height:,} pixels), more "
                       f"than the limit of {MAX_IMAGE_PIXELS:,} pixels")
    if max(width, height) > MAX_IMAGE_ASPECT * min(width, height):
        raise BadInput(f"{path}: the image is {width}x{height}: its long side is more than "
                       f"{MAX_IMAGE_ASPECT} times its short side (the centre crop would see a "
                       f"sliver of it)")


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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)  # reads the header only
            with im:
                check_image_size(path, im.width, im.height)
                out.append(preprocess(im, (int(crop[0]), int(crop[1]))))
        except Image.DecompressionBombError:
            raise BadInput(f"{path}: the image is larger than the limit of "
                           f"{MAX_IMAGE_PIXELS:,} pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise BadInput(f"{path}: cannot read image ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'})") from None
    return torch.stack(out), [os.path.basename(p) for p in files]
