"""Memory a job will need, estimated from the architecture before anything is allocated.

Arithmetic only (the network is never built): a rough, deliberately generous estimate that
counts the copies of the weights a check may hold at once and the activations of one forward
pass.  :func:`mobileone_cli.platform.check_memory` compares it with what the machine has.
This module never imports torch.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from .specs import ArchSpec

__all__ = ["WEIGHT_COPIES", "weight_elements", "activation_elements", "job_bytes"]

# Copies of the train-form weights, in float32 units, that a check may hold at once: the train
# and deploy files (their models share those tensors), and, when a check runs several chunks of
# images, the blocks it keeps cast to float64 and perturbed (2 + 2 + 2); with room to spare.
WEIGHT_COPIES = 10


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
