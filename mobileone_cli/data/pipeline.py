"""Image files -> the tensors a MobileOne is evaluated on: ONE preprocessing for the whole tool.

The default is mmpretrain's MobileOne test pipeline (``configs/_base_/datasets/
imagenet_bs32_pil_resize.py`` of mmpretrain 1.2, the one its published accuracies come from),
reproduced step by step from mmcv 2.2 and mmpretrain 1.2:

1. decode (``LoadImageFromFile``, OpenCV ``IMREAD_COLOR``): 8-bit, 3 channels, alpha dropped,
   EXIF orientation applied, 16-bit samples shifted right by 8 (what OpenCV does; Pillow's own
   conversion would clip them);
2. ``ResizeEdge(scale=256, edge='short', backend='pillow')``: the short edge becomes 256 and the
   long edge ``int(256 * long / short)`` (truncated); ``PIL.Image.resize`` with the filter
   (bilinear);
3. ``CenterCrop(224)``: offsets ``int(round((size - crop) / 2))``, Python's round (half to even:
   an offset of 16.5 is 16, 17.5 is 18);
4. ``ClsDataPreprocessor``: uint8 -> float32, ``(x - mean) / std`` in float32 with mean
   [123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375] on 0..255 RGB.

Every number is overridable (:func:`make_preprocessing`); :meth:`Preprocessing.describe` states
what ran, so a reported accuracy can be reproduced.  Pillow is the ``images`` extra.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from ..errors import BadInput, first_line
from ..rules.limits import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, MAX_INPUT_SIDE
from .walk import IMAGE_EXTENSIONS, NotInside, open_inside

__all__ = ["Preprocessing", "make_preprocessing", "ImageError", "DecodeOutOfMemory",
           "check_image_size", "open_image", "decoded",
           "resized_size", "crop_box", "transform", "load_tensor", "pillow", "INTERPOLATIONS",
           "IMAGE_EXTENSIONS", "MMPRETRAIN_MEAN", "MMPRETRAIN_STD", "PILLOW_HINT"]

MMPRETRAIN_MEAN = (123.675, 116.28, 103.53)
MMPRETRAIN_STD = (58.395, 57.12, 57.375)
RESIZE_RATIO = 256 / 224  # resize : crop of the default, kept when only the crop is changed
# mmcv's pillow set
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
PILLOW_HINT = "pip install 'mobileone-cli[images]'   (or: pip install pillow)"


class ImageError(BadInput):
    """One image file cannot be used (unreadable, damaged, too large).  ``eval`` counts it and
    goes on; ``verify --images`` stops on it."""


def pillow():
    try:
        from PIL import Image
    except ImportError:
        raise BadInput("reading images needs Pillow, which is not installed",
                       hint=PILLOW_HINT) from None
    return Image


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a (3, crop_h, crop_w) float32 tensor (see the module doc)."""

    resize: int = 256  # the short edge after resizing
    crop: Tuple[int, int] = (224, 224)  # (height, width) of the centre crop
    interpolation: str = "bilinear"  # Pillow filter of the resize
    mean: Tuple[float, float, float] = MMPRETRAIN_MEAN  # on 0..255, RGB order
    std: Tuple[float, float, float] = MMPRETRAIN_STD

    def __post_init__(self) -> None:
        h, w = self.crop
        if not 1 <= self.resize <= MAX_INPUT_SIDE:
            raise BadInput(f"--resize {self.resize}: must be between 1 and {MAX_INPUT_SIDE}")
        if not (1 <= h <= MAX_INPUT_SIDE and 1 <= w <= MAX_INPUT_SIDE):
            raise BadInput(f"--crop {h}x{w}: each side must be between 1 and {MAX_INPUT_SIDE}")
        if max(h, w) > self.resize:
            raise BadInput(f"--crop {h}x{w} does not fit in an image whose short edge is resized "
                           f"to {self.resize}",
                           hint="give a --resize at least as large as the crop")
        if self.interpolation not in INTERPOLATIONS:
            raise BadInput(f"--interpolation {self.interpolation!r}: one of "
                           f"{', '.join(INTERPOLATIONS)}")
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise BadInput(f"{name}: give three finite numbers (R,G,B)")
        if not all(v > 0 for v in self.std):
            raise BadInput("--std: every value must be > 0")

    @property
    def is_default(self) -> bool:
        return self == Preprocessing()

    def describe(self) -> str:
        """One line that says exactly what ran (printed with every result)."""
        h, w = self.crop

        def nums(v: Sequence[float]) -> str:
            return "[" + ", ".join(f"{x:g}" for x in v) + "]"

        origin = " (mmpretrain's MobileOne test pipeline)" if self.is_default else ""
        return (f"resize short edge to {self.resize} (Pillow {self.interpolation}), centre crop "
                f"{h}x{w}, RGB, mean {nums(self.mean)} std {nums(self.std)} on 0..255{origin}")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.update(crop=list(self.crop), mean=list(self.mean), std=list(self.std),
                 mmpretrain_default=self.is_default, description=self.describe())
        return d


def _triple(value: Any, option: str) -> Optional[Tuple[float, float, float]]:
    if value is None:
        return None
    parts = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    try:
        nums = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise BadInput(f"{option} {value!r}: give three numbers, e.g. 123.675,116.28,103.53") \
            from None
    if len(nums) != 3:
        raise BadInput(f"{option} {value!r}: give three numbers (R,G,B)")
    return nums


def make_preprocessing(resize: Optional[int] = None, crop: Any = None,
                       interpolation: Optional[str] = None, mean: Any = None,
                       std: Any = None) -> Preprocessing:
    """A :class:`Preprocessing` from command-line values; None keeps the default.

    A crop without a resize keeps the default's 256:224 ratio (to its longer side, so that it
    fits either way round).  Mean and std are on 0..255;
    three values that are all <= 1 (torchvision's 0.485, ...) are read as fractions of 255.
    """
    from ..rules.limits import parse_input_size

    crop_hw = parse_input_size(crop, option="--crop") if crop is not None else (224, 224)
    if resize is None:
        resize = 256 if crop is None else int(round(max(crop_hw) * RESIZE_RATIO))
    m, s = _triple(mean, "--mean"), _triple(std, "--std")
    if m is not None and s is not None and max(m + s) <= 1.0:
        m, s = tuple(255 * x for x in m), tuple(255 * x for x in s)  # type: ignore[assignment]
    elif (m is None) != (s is None) and max((m or s) or (2.0,)) <= 1.0:
        raise BadInput("--mean/--std on the 0..1 scale: give both (the other default is on "
                       "0..255)")
    return Preprocessing(resize=int(resize), crop=crop_hw,
                         interpolation=(interpolation or "bilinear").lower(),
                         mean=m or MMPRETRAIN_MEAN, std=s or MMPRETRAIN_STD)


def resized_size(width: int, height: int, short: int) -> Tuple[int, int]:
    """mmpretrain ResizeEdge(edge='short'): (w, h) with the short edge ``short`` and the long
    edge scaled and truncated."""
    if width < height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_box(width: int, height: int, crop: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """mmcv CenterCrop: (left, top, right, bottom), offsets rounded half to even."""
    ch, cw = crop
    top = max(0, int(round((height - ch) / 2.0)))
    left = max(0, int(round((width - cw) / 2.0)))
    return left, top, left + cw, top + ch


def _to_rgb(im):
    """Any decoded Pillow image as 8-bit RGB, the way OpenCV's IMREAD_COLOR makes it."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: keep the high byte
        import numpy as np

        Image = pillow()
        return Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8), "L"
                               ).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def check_image_size(path: str, width: int, height: int) -> None:
    """Refuse, from the header's size alone, an image too large or too elongated to use."""
    if width < 1 or height < 1:
        raise ImageError(f"{path}: the image is {width}x{height} pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: the image is {width}x{height} ({width * height:,} pixels), "
                         f"more than the limit of {MAX_IMAGE_PIXELS:,} pixels")
    if max(width, height) > MAX_IMAGE_ASPECT * min(width, height):
        raise ImageError(f"{path}: the image is {width}x{height}: its long side is more than "
                         f"{MAX_IMAGE_ASPECT} times its short side (the centre crop would see a "
                         f"sliver of it)")


def _quiet_pillow(Image) -> None:
    """Pillow warns (two lines on stderr) from ~89 Mpx, above the tool's own limit, which
    speaks first in one line.  A filter, not catch_warnings: decoding runs in threads."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


TRIM_PIXELS = 4 * 1024 * 1024  # images this large give their freed pages back at once


class DecodeOutOfMemory(BadInput):
    """An image could not be decoded for lack of memory: the run stops (exit 2).  Counting it
    as unreadable would report the accuracy of a different set of images."""


def _out_of_memory(path: str, size: Tuple[int, int]) -> DecodeOutOfMemory:
    return DecodeOutOfMemory(f"{path}: out of memory while decoding this {size[0]}x{size[1]} "
                             f"image; stopped, so that no image is silently left out",
                             hint="free memory, or decode with fewer --workers")


@contextlib.contextmanager
def decoded(path: str, root: Optional[str] = None) -> Iterator[Any]:
    """The decoded, EXIF-oriented 8-bit RGB image of ``path`` (a regular file, inside ``root``
    when given), its pixels held from the shared decode budget while the block runs.
    ImageError when it cannot be used; DecodeOutOfMemory when memory ran out."""
    Image = pillow()
    from PIL import ImageOps

    from .budget import DECODE

    _quiet_pillow(Image)
    try:
        fh = open_inside(path, root)
    except NotInside as exc:
        raise ImageError(str(exc)) from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    size = (0, 0)
    with fh:
        try:
            im = Image.open(fh)  # reads the header only
            size = im.size
            check_image_size(path, im.width, im.height)
        except ImageError:
            raise
        except MemoryError:
            raise _out_of_memory(path, size) from None
        except Exception as exc:  # Pillow raises many types for damaged files
            raise _unreadable(Image, path, exc) from None
        with im, DECODE.hold(im.width * im.height):
            try:
                im.load()
                if im.getexif().get(0x0112, 1) in range(2, 9):  # EXIF orientation, as OpenCV
                    rgb = _to_rgb(ImageOps.exif_transpose(im))
                else:
                    rgb = _to_rgb(im)
            except MemoryError:
                raise _out_of_memory(path, size) from None
            except Exception as exc:
                raise _unreadable(Image, path, exc) from None
            yield rgb


def _unreadable(Image, path: str, exc: BaseException) -> ImageError:
    if isinstance(exc, Image.DecompressionBombError):
        return ImageError(f"{path}: the image is larger than the limit of "
                          f"{MAX_IMAGE_PIXELS:,} pixels")
    detail = first_line(str(exc), 120) or "unreadable"
    return ImageError(f"{path}: cannot read image ({exc.__class__.__name__}: {detail})")


def open_image(path: str, root: Optional[str] = None):
    """The decoded, EXIF-oriented 8-bit RGB image of ``path`` (see :func:`decoded`)."""
    with decoded(path, root) as image:
        return image


def transform(image, p: Preprocessing):
    """A decoded RGB Pillow image -> float32 tensor (3, crop_h, crop_w) (steps 2-4)."""
    import numpy as np
    import torch

    Image = pillow()
    size = resized_size(image.width, image.height, p.resize)
    if size[0] * size[1] > MAX_IMAGE_PIXELS:  # a large --resize of an elongated image
        raise ImageError(f"an image of {image.width}x{image.height} would be resized to "
                         f"{size[0]}x{size[1]}, more than the limit of {MAX_IMAGE_PIXELS:,} "
                         f"pixels")
    if size != image.size:  # Pillow returns an unchanged copy at the same size, as mmcv gets
        image = image.resize(size, getattr(Image.Resampling, p.interpolation.upper()))
    image = image.crop(crop_box(image.width, image.height, p.crop))
    # numpy, not torch: decoding threads must not each start torch's intra-op thread pool.
    # float32 subtraction and division are correctly rounded in both: the same bits.
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32)
    x = (pixels - np.asarray(p.mean, dtype=np.float32)) / np.asarray(p.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def load_tensor(path: str, p: Preprocessing, root: Optional[str] = None):
    """``path`` decoded and preprocessed: float32 (3, crop_h, crop_w); ImageError if unusable,
    DecodeOutOfMemory if memory ran out (see :func:`decoded`)."""
    from ..platform import release_freed_heap

    with decoded(path, root) as image:
        pixels = image.width * image.height
        try:
            out = transform(image, p)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc.message}") from None
        except MemoryError:
            raise _out_of_memory(path, image.size) from None
    del image
    if pixels >= TRIM_PIXELS:
        # Each decoding thread has its own malloc arena, which keeps the freed pages of a
        # large image: without this, eight workers peak ~250 MB above one at the pixel limit.
        release_freed_heap()
    return out
