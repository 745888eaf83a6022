"""Memory a job will need, estimated from the architecture before anything is allocated.

A config within every bound of :mod:`.limits` can still describe a network of a trillion
parameters (six stages of 64 pairs at 16384 channels).  Counting it is arithmetic; building it
is not: on Linux such a job does not fail with MemoryError but grows until the kernel kills it
(or the machine swaps).  Jobs that build models (``demo``, ``stats --bench``, the checks of
``verify``, ``convert`` and ``export``) therefore compare a rough, deliberately generous estimate
with the memory the machine has available and refuse, naming both numbers, when it cannot fit.
The estimate counts the copies of the weights a check may hold at once and the activations of
one forward pass.  This module never imports torch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from .errors import BadInput
from .arch.specs import ArchSpec
from .rules.dtypes import human_bytes

__all__ = ["available_memory", "weight_elements", "activation_elements", "job_bytes",
           "check_memory", "WEIGHT_COPIES", "release_freed_heap"]

# Copies of the train-form weights, in float32 units, that a check may hold at once: the train
# and deploy files (their models share those tensors), and, when a check runs several chunks of
# images, the blocks it keeps cast to float64 and perturbed (2 + 2 + 2); with room to spare.
WEIGHT_COPIES = 10


def available_memory() -> Optional[int]:
    """Bytes a new allocation can get now: Linux ``MemAvailable``, lowered to what is left
    under the container's memory limit (cgroup v2 or v1) when there is one; None if unknown."""
    have = _meminfo_available()
    left = _cgroup_left()
    if left is not None:
        have = left if have is None else min(have, left)
    return have


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_left() -> Optional[int]:
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit, "r", encoding="ascii") as fh:
                text = fh.read().strip()
            if text == "max" or int(text) >= 1 << 60:  # no limit
                return None
            with open(usage, "r", encoding="ascii") as fh:
                return max(0, int(text) - int(fh.read().strip()))
        except (OSError, ValueError):
            continue
    return None


def weight_elements(arch: ArchSpec) -> int:
    """Elements of every tensor of the train form (the larger form)."""
    total = 0
    for b in arch.block_specs():
        cpg = b.in_channels // b.groups
        per_bn = 4 * b.out_channels
        branches = b.conv_branches + (1 if b.has_scale else 0) + (1 if b.has_identity else 0)
        total += b.conv_branches * b.out_channels * cpg * b.kernel_size ** 2
        total += (b.out_channels * cpg if b.has_scale else 0) + branches * per_bn
        if b.se_channels:
            total += 2 * b.se_channels * b.out_channels + b.se_channels + b.out_channels
    last = arch.widths[-1] if arch.widths else arch.stem_channels
    return total + (arch.num_classes * (last + 1) if arch.num_classes else 0)


def activation_elements(arch: ArchSpec, input_size: Sequence[int]) -> Tuple[int, int]:
    """(largest, sum) of the block outputs of one image of ``input_size``."""
    h, w = int(input_size[0]), int(input_size[1])
    largest = total = arch.in_channels * h * w
    for b in arch.block_specs():
        h = max(1, (h + 2 * b.padding - b.kernel_size) // b.stride + 1)
        w = max(1, (w + 2 * b.padding - b.kernel_size) // b.stride + 1)
        n = b.out_channels * h * w
        largest = max(largest, n)
        total += n
    return largest, total


def job_bytes(arch: ArchSpec, input_size: Sequence[int] = (224, 224), per_pass: int = 1,
              images: int = 0) -> int:
    """Generous estimate of the peak bytes of building, fusing and checking ``arch`` with
    ``per_pass`` images of ``input_size`` in one forward pass (``images`` held in all)."""
    largest, total = activation_elements(arch, input_size)
    branches = max((b.conv_branches for b in arch.block_specs()), default=1) + 3
    # float64 passes; three models side by side; the block outputs of a pass are compared
    # as they come, the branches of the widest block exist at once.
    per_image = 8 * 3 * (largest * branches + total)
    h, w = int(input_size[0]), int(input_size[1])
    inputs = 12 * images * arch.in_channels * h * w  # generated in float64, kept in float32
    return 4 * WEIGHT_COPIES * weight_elements(arch) + per_pass * per_image + inputs


def check_memory(need: int, what: str, hint: Optional[str] = None) -> None:
    """BadInput naming ``what`` when ``need`` bytes exceed the memory available now."""
    have = available_memory()
    if have is not None and need > have:
        raise BadInput(f"{what} needs about {human_bytes(need)} of memory; this machine has "
                       f"{human_bytes(have)} available", hint=hint)


_TRIM = None  # glibc's malloc_trim, False where the C library has none


def release_freed_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; elsewhere nothing).

    Once glibc's allocation thresholds have risen (they do after the first large tensor is
    freed), memory freed in the middle of the heap stays resident: a fusion that frees each
    block's train tensors as it makes the deploy ones would peak ~10 MB higher on s4 without
    this.  Costs well under a millisecond a call."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = getattr(ctypes.CDLL(None), "malloc_trim", False)
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)
