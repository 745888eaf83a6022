"""Random but realistic MobileOne checkpoints, for the demo, the tests and the benchmarks.

Every BatchNorm gets non-trivial statistics (running_mean ~ U(-1, 1), running_var ~ U(0.5, 2),
gamma ~ U(0.5, 1.5), beta ~ U(-0.5, 0.5)): with the defaults (0, 1, 1, 0) a fusion that forgets
the mean, the variance or eps still looks right.  Conv weights are scaled by fan-in and branch count
so activations stay in a sane range through all 43 blocks.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from .arch import ArchSpec
from .layouts import schema

__all__ = ["random_state_dict"]


def random_state_dict(arch: ArchSpec, *, form: str = "train", layout: str = "apple",
                      seed: int = 0, dtype: torch.dtype = torch.float32,
                      generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """A full state dict of ``arch`` in ``layout`` and ``form`` with random weights and stats."""
    g = generator or torch.Generator().manual_seed(seed)
    specs = {b.name: b for b in arch.block_specs()}

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo

    out: Dict[str, torch.Tensor] = {}
    for e in schema(arch, layout, form):
        leaf = e.canonical.rsplit(".", 1)[1]
        is_bn = ".bn." in e.canonical or ".rbr_skip." in e.canonical
        if leaf == "num_batches_tracked":
            out[e.key] = torch.tensor(int(torch.randint(1, 10_000, (1,), generator=g)))
            continue
        if is_bn:
            lo, hi = {"running_mean": (-1.0, 1.0), "running_var": (0.5, 2.0),
                      "weight": (0.5, 1.5), "bias": (-0.5, 0.5)}[leaf]
            t = uniform(e.shape, lo, hi)
        elif leaf == "weight":
            fan_in = math.prod(e.shape[1:])
            spec = specs.get(e.block)
            branches = 1 if spec is None else spec.conv_branches + spec.has_scale + spec.has_identity
            t = torch.randn(e.shape, generator=g, dtype=torch.float64) * math.sqrt(
                1.0 / (fan_in * branches))
        else:  # conv/linear bias
            t = uniform(e.shape, -0.1, 0.1)
        out[e.key] = t.to(dtype)
    return out
