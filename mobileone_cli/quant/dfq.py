"""Data-free quantization of a deploy MobileOne: the equalized fp32 model (:mod:`..fuse.equalize`)
and, for the int8 path only, a copy whose biases carry the bias correction
(:mod:`.biascorrect`) for one weight scheme."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ..arch.layouts import remap
from ..arch.specs import ArchSpec
from ..check.harness import load_model
from ..check.localize import HEAD, compared_modules
from ..fuse.equalize import Equalization, equalize_state_dict
from ..fuse.fusion import fuse_state_dict
from .biascorrect import corrected_bias, expected_inputs, rescaled
from .fakequant import quantize_weight

__all__ = ["Equalized", "equalize_source", "bias_corrected_copy"]


@dataclass
class Equalized:
    """The equalized deploy model (fp32, the same function) and what bias correction needs."""

    model: nn.Module
    equalization: Equalization
    expected: Optional[Dict[str, torch.Tensor]]  # mean input per layer; None: no BN statistics


def equalize_source(sd: Mapping[str, torch.Tensor], arch: ArchSpec, *, form: str, layout: str,
                    eps: float, dtype: torch.dtype = torch.float32) -> Equalized:
    """Fuse (train form) in float64, equalize in float64, round once to ``dtype``; the mean
    inputs from the train form's BatchNorm statistics (None for a deploy-form source)."""
    if form == "train":
        fused = fuse_state_dict(dict(sd), arch, eps=eps, dtype=torch.float64, layout=layout)
        train = remap(sd, arch, layout, "apple", "train")
        expected = expected_inputs(train, arch)
    else:
        fused, expected = dict(sd), None
    apple = remap(fused, arch, layout, "apple", "deploy")
    eq_sd, eq = equalize_state_dict(apple, arch, dtype=dtype)
    model = load_model(eq_sd, arch, "deploy", dtype=dtype)
    return Equalized(model, eq, None if expected is None else rescaled(expected, eq))


@torch.no_grad()
def bias_corrected_copy(model: nn.Module, expected: Optional[Dict[str, torch.Tensor]],
                        scheme: str) -> nn.Module:
    """A copy of the deploy ``model`` whose conv and head biases are corrected for ``scheme``'s
    int8 weight rounding; for a quantizer that rounds the weights itself (PT2E)."""
    out = copy.deepcopy(model)
    if not expected:
        return out
    for name, _, mod in compared_modules(out):
        layer = mod if name == HEAD else mod.reparam_conv
        mean = expected.get(name)
        if mean is None or layer.bias is None:
            continue
        wq = quantize_weight(layer.weight, scheme)
        layer.bias.copy_(corrected_bias(layer.bias, layer.weight, wq, mean,
                                        getattr(layer, "groups", 1)))
    return out
