"""Data-free bias correction (Nagel et al., ICCV 2019, section 4.2): what int8 weight rounding
shifts a layer's output by, on average, taken back out of its bias.

For a layer y = W x + b and its int8 weights W_q, the expected error of the output is
``E[(W_q - W) x] = (W_q - W) E[x]`` (zero padding at the borders aside), so ``b - (W_q - W) E[x]``
makes the int8 layer right on average.  E[x] comes from the train checkpoint's BatchNorm
statistics, without data: a train block's pre-activation is the sum of its branches' BatchNorm
outputs, and a BatchNorm with running statistics measured on the data outputs mean beta and
standard deviation |gamma| per channel.  The sum's mean is the sum of the betas; its variance is
taken as the sum of gamma^2 (branches uncorrelated, the paper's Gaussian assumption per
channel); an SE gate is evaluated at that mean (SE sees the spatial mean of its input); the ReLU
turns N(m, s^2) into a clipped normal of mean ``m Phi(m/s) + s phi(m/s)``.  The stem's input is
a normalized image (mean about 0): it gets no correction.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import torch

from ..arch.specs import ArchSpec, BlockSpec

__all__ = ["expected_inputs", "relu_mean", "bias_shift", "corrected_bias", "rescaled"]

HEAD = "linear"


def relu_mean(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """E[max(0, y)] for y ~ N(m, s^2), per element (s = 0: max(0, m))."""
    m, s = m.to(torch.float64), s.to(torch.float64)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    z = m / safe
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return torch.where(s > 0, m * cdf + safe * pdf, torch.clamp(m, min=0))


def _branch_bns(spec: BlockSpec):
    names = [f"rbr_conv.{i}.bn" for i in range(spec.conv_branches)]
    if spec.has_scale:
        names.append("rbr_scale.bn")
    if spec.has_identity:
        names.append("rbr_skip")
    return [f"{spec.name}.{n}" for n in names]


def _se_gate(sd: Mapping[str, torch.Tensor], spec: BlockSpec, m: torch.Tensor) -> torch.Tensor:
    def conv(name: str, x: torch.Tensor) -> torch.Tensor:
        w = sd[f"{spec.name}.se.{name}.weight"].to(torch.float64)
        return w.reshape(w.shape[0], -1) @ x + sd[f"{spec.name}.se.{name}.bias"].to(torch.float64)
    return torch.sigmoid(conv("expand", torch.relu(conv("reduce", m))))


def expected_inputs(train_sd: Mapping[str, torch.Tensor], arch: ArchSpec
                    ) -> Dict[str, torch.Tensor]:
    """E[input] per channel (float64) of every layer after the stem (blocks, then the head
    ``linear``), from the train state dict's BatchNorm statistics (Apple names)."""
    out: Dict[str, torch.Tensor] = {}
    specs = list(arch.block_specs())
    consumers = [s.name for s in specs[1:]] + ([HEAD] if arch.has_head else [])
    for spec, consumer in zip(specs, consumers):
        m = torch.zeros(spec.out_channels, dtype=torch.float64)
        var = torch.zeros_like(m)
        for bn in _branch_bns(spec):
            m = m + train_sd[f"{bn}.bias"].to(torch.float64)
            var = var + train_sd[f"{bn}.weight"].to(torch.float64) ** 2
        mean = relu_mean(m, torch.sqrt(var))
        if spec.has_se:
            mean = mean * _se_gate(train_sd, spec, m)
        out[consumer] = mean
    return out


def rescaled(expected: Dict[str, torch.Tensor], eq) -> Dict[str, torch.Tensor]:
    """The expectations of the equalized network (fuse.equalize.Equalization ``eq``): the
    producer's output channel i was divided by s_i, so is the consumer's mean input."""
    out = dict(expected)
    for p in eq.equalized:
        if p.consumer in out:
            out[p.consumer] = out[p.consumer] / p.scales
    return out


def bias_shift(w: torch.Tensor, wq: torch.Tensor, mean: torch.Tensor,
               groups: int = 1) -> torch.Tensor:
    """(W_q - W) E[x] per output channel, float64, for a (grouped) conv or a linear layer."""
    d = (wq.to(torch.float64) - w.to(torch.float64))
    o, per = d.shape[0], d.shape[1]
    d = d.reshape(groups, o // groups, per, -1)
    return (d * mean.to(torch.float64).reshape(groups, 1, per, 1)).sum(dim=(2, 3)).reshape(o)


def corrected_bias(bias: torch.Tensor, w: torch.Tensor, wq: torch.Tensor,
                   mean: Optional[torch.Tensor], groups: int = 1) -> torch.Tensor:
    """``bias - (W_q - W) E[x]`` in ``bias``'s dtype (``bias`` itself when E[x] is unknown)."""
    if mean is None:
        return bias.detach()
    b = bias.detach().to(torch.float64) - bias_shift(w, wq, mean, groups)
    return b.to(bias.dtype)
