"""The check harness that convert, verify, export and eval share: models built from state dicts,
seeded inputs, output metrics, weight perturbation and the device and memory guards.  The verdict
rule built on them lives in :mod:`.verdict`.
"""
from __future__ import annotations

import contextlib
import copy
import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..arch.layouts import remap
from ..arch.memory import job_bytes
from ..arch.specs import ArchSpec
from ..errors import BadInput
from ..platform import check_memory
from ..rules.limits import check_seed
from ..rules.tolerances import DEFAULT_ATOL, DEFAULT_RTOL

__all__ = ["Metrics", "compare_outputs", "load_model", "seeded_inputs", "strict_fp32",
           "resolve_device", "perturb", "perturb_", "perturb_module", "float_dtype", "CHUNK",
           "per_pass", "check_room"]

CHUNK = 4  # images per forward pass while block outputs are kept (bounds memory)


@dataclass
class Metrics:
    """How far ``out`` is from ``ref``; relative numbers are relative to max |ref|."""

    max_abs: float
    max_rel: float
    scale: float  # max |ref|
    cosine: float
    top1: Optional[float] = None  # fraction of rows whose argmax agrees (logits only)
    top5: Optional[float] = None  # fraction of rows whose top-5 sets agree
    finite: bool = True

    def within(self, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> bool:
        return self.finite and self.max_abs <= atol + rtol * self.scale

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def compare_outputs(ref: torch.Tensor, out: torch.Tensor, logits: bool = True) -> Metrics:
    """Metrics of ``out`` against ``ref``, computed in float64."""
    r = ref.detach().to(torch.float64).reshape(ref.shape[0], -1)
    o = out.detach().to(torch.float64).reshape(out.shape[0], -1)
    finite = bool(torch.isfinite(o).all() and torch.isfinite(r).all())
    diff = (r - o).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(r.abs().max()) if r.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    cos = torch.nn.functional.cosine_similarity(r, o, dim=1)
    m = Metrics(max_abs=max_abs, max_rel=max_rel, scale=scale, cosine=float(cos.min()),
                finite=finite)
    if logits and r.shape[1] > 1:
        m.top1 = float((r.argmax(1) == o.argmax(1)).to(torch.float64).mean())
        k = min(5, r.shape[1])
        tr = r.topk(k, dim=1).indices.sort(dim=1).values
        to = o.topk(k, dim=1).indices.sort(dim=1).values
        m.top5 = float((tr == to).all(dim=1).to(torch.float64).mean())
    if not finite:
        m.max_abs = m.max_rel = math.inf
    return m


def float_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The widest floating dtype among the tensors (the precision the file stores)."""
    wide = None
    for v in state_dict.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            wide = v.dtype if wide is None else torch.promote_types(wide, v.dtype)
    return wide or torch.float32


def load_model(state_dict: Mapping[str, torch.Tensor], arch: ArchSpec, form: str, *,
               layout: str = "apple", bn_eps: Optional[float] = None,
               device: str = "cpu", dtype: Optional[torch.dtype] = None):
    """Our MobileOne in eval mode holding ``state_dict`` (strict; shares memory when it can)."""
    from ..models.mobileone import MobileOne

    apple_sd = remap(state_dict, arch, layout, "apple", form)
    with torch.device("meta"):  # no allocation, no random init: every tensor is assigned below
        model = MobileOne(arch, deploy=(form == "deploy"), bn_eps=bn_eps)
    target = dtype or float_dtype(apple_sd)
    apple_sd = {k: (v.to(device=device, dtype=target) if v.is_floating_point() else v.to(device))
                for k, v in apple_sd.items()}
    model.load_state_dict(apple_sd, strict=True, assign=True)
    return model.eval()


def per_pass(input_size: Sequence[int], chunk: int = CHUNK) -> int:
    """Images per forward pass of a check: every block's output is held for one chunk, so
    fewer images go through at once for large inputs."""
    return max(1, min(chunk, chunk * 224 * 224 // (int(input_size[0]) * int(input_size[1]))))


def check_room(arch: ArchSpec, input_size: Sequence[int], images: int, what: str) -> None:
    """Refuse, before any allocation, a check that cannot fit in this machine's memory."""
    h, w = int(input_size[0]), int(input_size[1])
    check_memory(job_bytes(arch, (h, w), per_pass=min(images, per_pass((h, w))), images=images),
                 f"{what} of {arch.name} on {images} image(s) of {h}x{w}",
                 hint="use a smaller --batch or --input-size")


def seeded_inputs(seed: int = 0, batch: int = 1, input_size: Sequence[int] = (224, 224),
                  channels: int = 3, dtype: torch.dtype = torch.float32,
                  device: str = "cpu") -> torch.Tensor:
    """Standard-normal images from a private generator: same seed, same images, everywhere."""
    g = torch.Generator().manual_seed(check_seed(seed))
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return torch.randn(batch, channels, h, w, generator=g, dtype=torch.float64).to(
        device=device, dtype=dtype)


PERTURB_SEED = 1234


PERTURB_CHUNK = 1 << 18  # elements perturbed at a time: a few MiB of temporaries at most
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def perturb_(tensor: torch.Tensor, key: str, unit: float, seed: int = PERTURB_SEED) -> None:
    """``tensor`` (named ``key``) times (1 +- ``unit``) in place, signs at random, made in its
    own dtype: w + w * (+-unit) is w * (1 +- unit) rounded once.

    The signs are the bits of random bytes (a fair coin each) from a generator seeded by the
    name and the slice, so a tensor gets the same signs whether a whole state dict or one block
    is perturbed, and the temporaries stay small."""
    flat = tensor.view(-1)
    base = seed + zlib.crc32(key.encode())
    for start in range(0, flat.numel(), PERTURB_CHUNK):
        part = flat[start:start + PERTURB_CHUNK]
        g = torch.Generator().manual_seed(base + start // PERTURB_CHUNK)
        words = torch.randint(0, 256, ((part.numel() + 7) // 8,), generator=g,
                              dtype=torch.uint8)
        bits = ((words.unsqueeze(1) >> _BIT_SHIFTS) & 1).reshape(-1)[:part.numel()]
        part.addcmul_(part, bits.to(part).mul_(2 * unit).sub_(unit))


def perturb(state_dict: Mapping[str, torch.Tensor], unit: float,
            seed: int = PERTURB_SEED) -> Dict[str, torch.Tensor]:
    """Every float tensor times (1 +- ``unit``) (:func:`perturb_`), in float64: a rounding-sized
    change of every weight (counters pass through)."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            out[k] = v.to(torch.float64, copy=True).contiguous()
            perturb_(out[k], k, unit, seed)
        else:
            out[k] = v
    return out


def perturb_module(module: nn.Module, name: str, unit: float,
                   seed: int = PERTURB_SEED) -> nn.Module:
    """A copy of ``module`` (named ``name`` in its model) with :func:`perturb`'s change, made in
    the module's dtype (the value :func:`perturb` followed by a cast to that dtype gives)."""
    copy_ = copy.deepcopy(module)
    with torch.no_grad():
        for key, v in list(copy_.named_parameters()) + list(copy_.named_buffers()):
            if v.is_floating_point():
                perturb_(v, f"{name}.{key}", unit, seed)
    return copy_


@contextlib.contextmanager
def strict_fp32(device: Any = "cpu") -> Iterator[None]:
    """Full fp32 convolutions and matmuls on CUDA for the duration of a check.

    Ampere+ GPUs run fp32 convolutions in TF32 by default (10-bit mantissa): ~1e-3 of rounding
    that would both fail honest fusions and hide real errors.  Settings are restored after.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    targets: List[Tuple[Any, str, Any]]
    if conv is not None and hasattr(conv, "fp32_precision"):
        targets = [(conv, "fp32_precision", "ieee"),
                   (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        targets = [(torch.backends.cudnn, "allow_tf32", False),
                   (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    try:
        for obj, name, value in targets:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def resolve_device(name: str) -> str:
    """``--device`` -> a usable torch device string, or a clear error."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device {name!r}: not a device name (use cpu or cuda)") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise BadInput(f"--device {name!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise BadInput(f"--device {name}: CUDA is not available (this torch {torch.__version__} "
                       f"is built {built})", hint="use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BadInput(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return str(dev)
