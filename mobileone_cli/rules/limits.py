"""What a MobileOne (and one check of it) can be: the bounds every input is held to.

The released variants are far inside every bound (at most 4 stages, 10 pairs per stage, k = 4,
2048 channels, 1000 classes, 224x224).  The bounds exist so that a small hostile file or config
cannot ask for unbounded work: a config with a million blocks, a batch of 4096x4096 images.
Each refusal names the limit.  The single input-size parser of the tool lives here too.
This module never imports torch.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

from ..errors import BadInput
from .tolerances import short_number

__all__ = ["MAX_STAGES", "MAX_PAIRS", "MAX_BRANCHES", "MAX_CHANNELS", "MAX_KERNEL",
           "MAX_CLASSES", "MAX_INPUT_SIDE", "MAX_BATCH", "MAX_PASS_PIXELS", "MAX_BN_EPS",
           "DEFAULT_EPS", "MAX_META_ITEMS", "MAX_META_DEPTH", "MAX_SEED", "MAX_TENSORS",
           "MAX_IMAGE_PIXELS", "MAX_IMAGE_ASPECT", "MAX_IMAGES", "MAX_LISTED", "MAX_WORKERS",
           "MAX_LABEL_LINE", "MAX_CONFIG_BYTES", "MAX_ALIASES", "MAX_HEADER", "MAX_INT_DIGITS",
           "MAX_STUBS", "MAX_WALK_DEPTH", "MAX_WALK_ITEMS", "MAX_VIEW_BYTES", "MAX_TEXT_BYTES",
           "MAX_DECODE_PIXELS", "MAX_EXTERNAL_BYTES", "MAX_LOOP_TRIPS", "ONNX_RUN_SECONDS",
           "parse_input_size", "check_batch", "check_bn_eps", "default_eps", "resolve_eps",
           "check_seed", "MAX_DOWNLOAD",
           "MAX_REDIRECTS", "DOWNLOAD_TIMEOUT", "DOWNLOAD_ATTEMPTS"]

MAX_STAGES = 6  # stage slots of models.mobileone.MobileOne
MAX_PAIRS = 64  # depthwise+pointwise pairs per stage (released: 10)
MAX_BRANCHES = 16  # conv branches k per block (released: 4)
MAX_CHANNELS = 16384  # widths, stem and input channels (released: 2048)
MAX_KERNEL = 15  # kernel side (released: 3)
MAX_CLASSES = 100_000  # head size (ImageNet-21k: 21,841)
MAX_INPUT_SIDE = 4096  # pixels per side of one check image
MAX_BATCH = 1024  # images per check
# Pixels run through a model in one forward pass (batch x H x W): 8 Mpx is ~167 images at 224,
# two at 2048x2048; a pass of s4 at that size peaks near 2 GiB of activations.
MAX_PASS_PIXELS = 8 * 1024 * 1024
MAX_SEED = 2 ** 63 - 1  # torch generators take a 64-bit seed
# Tensors in one safetensors file: an s0 train file holds 1,323, a detector with a MobileOne
# backbone a few thousand; a million empty entries (67 MB of header) cost 27 CPU s to refuse.
MAX_TENSORS = 100_000
# Images (``verify --images``, ``eval``): the pixels one file may decode to (a 64-megapixel
# photo; RGB 192 MB; ImageNet's largest is ~16 Mpx), how elongated it may be (a panorama; the
# resize keeps the aspect ratio, so a 1x20000 strip would become 256 x 5,120,000) and how many
# files one ``verify`` check reads (--batch's bound; ``eval`` streams any number).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MAX_IMAGE_ASPECT = 16
MAX_IMAGES = MAX_BATCH
# ``eval``: names a report lists (disagreeing or unreadable images; the rest are counted),
# image-decoding threads, and characters of one line of a labels or classes file.
MAX_LISTED = 1000
MAX_WORKERS = 64
MAX_LABEL_LINE = 4096
# Bytes the tensors of a torch file may claim beyond the bytes it stores.  A tensor is a view:
# shape, strides and an offset into a storage, so a 1.6 KB file can hold a stride-0 (broadcast)
# tensor of 2**40 elements over 4 stored bytes, which any computation on it then materialises.
# Tied weights (one storage under two keys) claim their bytes twice: the allowance is the
# larger of this and the stored bytes themselves, so work stays within twice the file.
MAX_VIEW_BYTES = 64 * 1024 * 1024
# Text inputs (--config, --labels, --classes): bytes read at most.  ImageNet's validation list
# is 1.6 MB and a synset list 31 KB; a model config is a few hundred bytes (its own, smaller
# bound is MAX_CONFIG_BYTES).
MAX_TEXT_BYTES = 64 * 1024 * 1024
# ``eval``: decoded pixels in flight across every decoding thread (RGB: 3 bytes each, plus
# Pillow's working copies, ~13 bytes a pixel), whatever --workers says: one image at the
# pixel limit, or hundreds of ordinary photos, at a time.
MAX_DECODE_PIXELS = MAX_IMAGE_PIXELS
# Bytes of the files an exported artifact names (an .mlpackage's weight file, an ONNX
# model's external data): the largest MobileOne (s4) in fp32 is 60 MB.
MAX_EXTERNAL_BYTES = 2 * 1024 * 1024 * 1024
# ONNX graphs from elsewhere: the largest trip count of a Loop whose count is a constant (a
# MobileOne deploy graph has no Loop at all), and the seconds one run of a graph may take.
MAX_LOOP_TRIPS = 1024
ONNX_RUN_SECONDS = 300.0
# BatchNorm eps of real models is 1e-5 (PyTorch), 1e-3 (TF ports) or 1e-6; above 1 it is a typo.
# Checkpoints do not store it: a config or --bn-eps says it, else PyTorch's default.
DEFAULT_EPS = 1e-5
MAX_BN_EPS = 1.0
# Pickled metadata carried into an output (mmpretrain's 'meta'): objects copied, and nesting.
# A real 'meta' holds a few hundred (a config text, class names); a hostile file can name the
# same list 2**60 times through shared references, which the copy visits once each.
MAX_META_ITEMS = 1_000_000
MAX_META_DEPTH = 100
# Files read before anything is trusted: a YAML model config (a few hundred bytes) and its aliases
# (*ref; alias bombs expand exponentially); a safetensors header (the safetensors library's own
# limit) and the digits of one of its integers (2**64 - 1 has 20: larger is no size or offset);
# the foreign globals one pickle may name (more is not a checkpoint we can help with); the
# nesting levels and container items walked to list the tensors of a loaded object.
MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 64
MAX_HEADER = 100 * 1024 * 1024
MAX_INT_DIGITS = 20
MAX_STUBS = 256
MAX_WALK_DEPTH = 8
MAX_WALK_ITEMS = 200_000
# Downloads (``apple:s0``, ``hf-hub:...``, URLs): the bytes one file may have (the largest official
# checkpoint is 60 MB), redirects followed, the seconds a connection or a silent read may take
# (MOBILEONE_TIMEOUT replaces it) and the tries of a transfer that breaks off (each resumes).
MAX_DOWNLOAD = 1024 ** 3
MAX_REDIRECTS = 5
DOWNLOAD_TIMEOUT = 30.0
DOWNLOAD_ATTEMPTS = 3


def parse_input_size(value: Any, *, option: str = "--input-size") -> Tuple[int, int]:
    """'224', '224x192', '224,192', '224 192', 224 or (224, 192) -> (H, W), checked."""
    if isinstance(value, bool):
        parts: Sequence[Any] = []
    elif isinstance(value, int):
        parts = [value]
    elif isinstance(value, str):
        parts = value.lower().replace("x", " ").replace(",", " ").split()
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = []
    nums: List[int] = []
    for p in parts:
        text = str(p).strip()
        if not text.isdigit() or len(text) > 6:
            nums = []
            break
        nums.append(int(text))
    if len(nums) not in (1, 2):
        raise BadInput(f"{option} {_short(value)}: give one size or H and W, e.g. 224 or 224x192")
    h, w = (nums[0], nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    if not (1 <= h <= MAX_INPUT_SIDE and 1 <= w <= MAX_INPUT_SIDE):
        raise BadInput(f"{option} {h}x{w}: each side must be between 1 and {MAX_INPUT_SIDE}")
    return h, w


def check_batch(batch: int, input_size: Tuple[int, int], *, option: str = "--batch",
                per_pass: bool = True) -> int:
    """``batch`` if it is allowed at ``input_size``; ``per_pass``: the whole batch runs at once."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise BadInput(f"{option} {_short(batch)}: must be between 1 and {MAX_BATCH}")
    h, w = input_size
    one = h * w
    if one > MAX_PASS_PIXELS:
        raise BadInput(f"--input-size {h}x{w}: {one:,} pixels per image is more than one pass "
                       f"may hold ({MAX_PASS_PIXELS:,})")
    if per_pass and batch * one > MAX_PASS_PIXELS:
        raise BadInput(f"{option} {batch} at {h}x{w}: {batch * one:,} pixels in one pass, more "
                       f"than the limit of {MAX_PASS_PIXELS:,}",
                       hint=f"use a batch of at most {max(1, MAX_PASS_PIXELS // one)} at this size")
    return batch


def check_seed(seed: Any, option: str = "--seed") -> int:
    """``seed`` if it is an integer torch's generators accept (0 .. 2**63 - 1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BadInput(f"{option} {_short(seed)}: must be an integer between 0 and {MAX_SEED}")
    return seed


def check_bn_eps(eps: Any, option: str = "--bn-eps") -> float:
    """``eps`` as a float, or BadInput: it must be finite and in [0, MAX_BN_EPS].  The one rule
    for ``--bn-eps``, the library's ``eps=`` and a config's ``norm_cfg.eps``/``bn_eps``: 0 is
    PyTorch's BatchNorm without eps (exact where every running_var is positive)."""
    if isinstance(eps, bool):
        raise BadInput(f"{option} {_short(eps)} is not a number")
    try:
        value = float(eps)
    except (TypeError, ValueError, OverflowError):
        raise BadInput(f"{option} {_short(eps)} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > MAX_BN_EPS:
        raise BadInput(f"{option} {_short(eps)} is out of range: BatchNorm eps must be finite "
                       f"and between 0 and {MAX_BN_EPS:g}",
                       hint=f"PyTorch's default, used by every released MobileOne, is "
                            f"{short_number(DEFAULT_EPS)}")
    return value


def default_eps(eps: Optional[float]) -> float:
    """``eps`` when stated, else :data:`DEFAULT_EPS` (checkpoints do not store it)."""
    return DEFAULT_EPS if eps is None else eps


def resolve_eps(option: Optional[float], config: Optional[float], source: str = "the config"
                ) -> float:
    """The BatchNorm eps to fuse with: ``--bn-eps`` or the config's (they must agree), else
    PyTorch's default."""
    if option is not None:
        option = check_bn_eps(option)
    if option is not None and config is not None and option != config:
        raise BadInput(f"--bn-eps {option:g} conflicts with the BatchNorm eps {config:g} of "
                       f"{source}", hint="drop one of them: they must say the same")
    if option is not None:
        return option
    return default_eps(config)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
