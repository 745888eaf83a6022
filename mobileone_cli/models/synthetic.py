"""Synthetic MobileOne checkpoints for the demo, the tests and the benchmarks, in two kinds.

* ``calibrated`` (the default) behaves like a trained network: BatchNorm running statistics are
  measured by a forward pass in train mode over a batch of random images, so every
  block's output stays O(1) through all stages, as in a real checkpoint.  gamma ~ U(0.5, 1.5) and
  beta ~ U(-0.5, 0.5) stay random, so a fusion that forgets gamma, beta, the mean, the variance or
  eps still shows.
* ``random``: running_mean ~ U(-1, 1) and running_var ~ U(0.5, 2) drawn at random, as a stress
  case.  Such a network is ill-conditioned like no trained one: activations grow x3-5 per block
  (~1e9 at s4's head), SE gates saturate and fp32 rounding is amplified until an exact fusion
  differs from its train model by 1e-3..1e-1 in fp32 (float64 agrees to ~1e-7).

Conv weights are scaled by fan-in and branch count.  The same seed gives the same tensors, whatever
the caller's thread count: it all runs on one thread.  That is also what makes it fast:
its convolutions are small (64 px images), and several threads on a busy machine spend ~10x the
CPU time waiting for each other (s1: ~0.5 s on one thread, 2.5-26 s on two shared cores).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Dict, Optional

import torch

from ..arch.layouts import remap, schema
from ..arch.specs import ArchSpec

__all__ = ["random_state_dict", "STATS", "CALIBRATION_SIZE", "CALIBRATION_IMAGES"]

STATS = ("calibrated", "random")
CALIBRATION_SIZE = 64  # pixels per side of the calibration images
CALIBRATION_IMAGES = 32  # in one batch: each BatchNorm is measured on the batch it normalizes


def _uniform(g: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo


def _raw_train(arch: ArchSpec, g: torch.Generator) -> Dict[str, torch.Tensor]:
    """Apple-layout train state dict with random weights and random BatchNorm statistics."""
    specs = {b.name: b for b in arch.block_specs()}
    out: Dict[str, torch.Tensor] = {}
    for e in schema(arch, "apple", "train"):
        leaf = e.canonical.rsplit(".", 1)[1]
        is_bn = ".bn." in e.canonical or ".rbr_skip." in e.canonical
        if leaf == "num_batches_tracked":
            out[e.key] = torch.tensor(int(torch.randint(1, 10_000, (1,), generator=g)))
        elif is_bn:
            lo, hi = {"running_mean": (-1.0, 1.0), "running_var": (0.5, 2.0),
                      "weight": (0.5, 1.5), "bias": (-0.5, 0.5)}[leaf]
            out[e.key] = _uniform(g, e.shape, lo, hi)
        elif leaf == "weight":
            fan_in = math.prod(e.shape[1:])
            spec = specs.get(e.block)
            branches = (1 if spec is None else
                        spec.conv_branches + spec.has_scale + spec.has_identity)
            out[e.key] = torch.randn(e.shape, generator=g, dtype=torch.float64) * math.sqrt(
                1.0 / (fan_in * branches))
        else:  # conv/linear bias
            out[e.key] = _uniform(g, e.shape, -0.1, 0.1)
    return out


@contextmanager
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _calibrate(arch: ArchSpec, sd: Dict[str, torch.Tensor], g: torch.Generator
               ) -> Dict[str, torch.Tensor]:
    """Replace every running mean/var by what a train-mode forward pass over images measures."""
    from .mobileone import MobileOne

    with torch.device("meta"):
        model = MobileOne(arch)
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                           for k, v in sd.items()}, assign=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the running statistics become the batch's own
    model.train()
    size = max(CALIBRATION_SIZE, _min_side(arch))
    x = torch.randn(CALIBRATION_IMAGES, arch.in_channels, size, size, generator=g)
    with torch.inference_mode():
        model(x)
    return {k: v.to(torch.float64) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


def _min_side(arch: ArchSpec) -> int:
    return 2 ** (arch.num_stages + 1)


def random_state_dict(arch: ArchSpec, *, form: str = "train", layout: str = "apple",
                      seed: int = 0, dtype: torch.dtype = torch.float32,
                      stats: str = "calibrated",
                      generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """A full state dict of ``arch`` in ``layout`` and ``form``, with ``stats`` BatchNorm
    statistics ('calibrated' or 'random', see the module docstring)."""
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, not {stats!r}")
    g = generator or torch.Generator().manual_seed(seed)
    with _one_thread():
        sd = _raw_train(arch, g)
        if stats == "calibrated":
            sd = _calibrate(arch, sd, g)
        if form == "deploy":
            from ..fuse.fusion import fuse_state_dict

            sd = fuse_state_dict(sd, arch, eps=arch.eps)
        out = remap(sd, arch, "apple", layout, form)
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
