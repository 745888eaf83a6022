"""int8 fake quantization in plain torch: what an int8 kernel computes, in float.

* Weights: symmetric int8 in [-127, 127] (XNNPACK's symmetric config), one scale per output
  channel (``per-channel``) or one for the tensor (``per-tensor``): ``scale = max|w| / 127``.
* Activations: affine int8 in [-128, 127], one (scale, zero point) per tensor, from the
  smallest and largest value seen during calibration (the range always holds 0, so 0 is exact).
* SQNR: ``10 log10(sum ref^2 / sum (ref - q)^2)`` in dB, summed over every element seen: the
  higher, the closer; every 6 dB is one bit.

No executorch, no torch.ao: the numbers are this module's own, so tests can check them against
an independent computation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ["SCHEMES", "W_QMAX", "A_QMIN", "A_QMAX", "quantize_weight", "Observer",
           "fake_quant", "Noise", "ChannelNoise", "sqnr_db", "channel_spread"]

SCHEMES = ("per-channel", "per-tensor")
W_QMAX = 127  # symmetric weights: [-127, 127]
A_QMIN, A_QMAX = -128, 127  # affine activations
_TINY = float(torch.finfo(torch.float32).eps)  # the smallest scale (torch's observers use it too)


def quantize_weight(w: torch.Tensor, scheme: str = "per-channel") -> torch.Tensor:
    """``w`` (output channels first) rounded to symmetric int8 and back, in ``w``'s dtype."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    w64 = w.detach().to(torch.float64)
    if scheme == "per-channel" and w64.dim() > 1:
        amax = w64.abs().reshape(w64.shape[0], -1).amax(dim=1)
        amax = amax.reshape(-1, *([1] * (w64.dim() - 1)))
    else:
        amax = w64.abs().max()
    scale = torch.clamp(amax / W_QMAX, min=_TINY)
    q = torch.clamp(torch.round(w64 / scale), -W_QMAX, W_QMAX)
    return (q * scale).to(w.dtype)


@dataclass
class Observer:
    """The range of one activation tensor over the calibration images."""

    name: str
    lo: float = math.inf
    hi: float = -math.inf

    def observe(self, x: torch.Tensor) -> None:
        if x.numel():
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    @property
    def finite(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def qparams(self) -> Tuple[float, int]:
        """(scale, zero point) of affine int8 over [min(lo, 0), max(hi, 0)]."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return math.inf, 0
        scale = max((hi - lo) / (A_QMAX - A_QMIN), _TINY)
        zero = int(min(A_QMAX, max(A_QMIN, A_QMIN - round(lo / scale))))
        return scale, zero


def fake_quant(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """``x`` quantized to affine int8 with (scale, zero point) and dequantized, in ``x``'s dtype
    (computed in float64, so the grid is exact; in place on one float64 copy)."""
    q = x.to(torch.float64, copy=True)
    q.div_(scale).round_().add_(zero).clamp_(A_QMIN, A_QMAX)
    return q.sub_(zero).mul_(scale).to(x.dtype)


def _float64_rows(ref: torch.Tensor, out: torch.Tensor):
    """(ref[i], out[i]) in float64, image by image (temporaries of one image); ``None`` for the
    first pair holding a NaN/Inf (the SQNR is then undefined), and nothing after it."""
    for r, o in zip(ref.detach(), out.detach()):
        r, o = r.to(torch.float64, copy=True), o.to(torch.float64, copy=True)
        if not (bool(torch.isfinite(r).all()) and bool(torch.isfinite(o).all())):
            yield None
            return
        yield r, o


def _energies(r: torch.Tensor, o: torch.Tensor, dims) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum of r^2, sum of (r - o)^2) over ``dims`` of one image (all of it when ``dims`` is
    None), reusing the float64 copies."""
    noise = o.sub_(r).pow_(2)
    signal = r.pow_(2)
    if dims is None:
        return signal.sum(), noise.sum()
    return (signal.sum(dims), noise.sum(dims)) if dims else (signal, noise)


@dataclass
class Noise:
    """Running sums of signal and noise energy of one tensor, over every image seen."""

    signal: float = 0.0
    noise: float = 0.0
    finite: bool = True

    def update(self, ref: torch.Tensor, out: torch.Tensor) -> None:
        for pair in _float64_rows(ref, out):
            if pair is None:
                self.finite = False
                return
            r, o = pair
            sig, noi = _energies(r, o, None)
            self.signal += float(sig)
            self.noise += float(noi)

    @property
    def db(self) -> Optional[float]:
        return sqnr_db(self.signal, self.noise) if self.finite else None


class ChannelNoise:
    """Signal and noise energy per channel (dim 1) of one tensor, over every image seen; the
    median channel's SQNR says what the typical channel keeps, which one loud channel (a wide
    range crushing the others) hides from the tensor's SQNR."""

    def __init__(self) -> None:
        self.signal: Optional[torch.Tensor] = None
        self.noise: Optional[torch.Tensor] = None
        self.finite = True

    def update(self, ref: torch.Tensor, out: torch.Tensor) -> None:
        for pair in _float64_rows(ref, out):
            if pair is None:
                self.finite = False
                return
            r, o = pair
            sig, noi = _energies(r, o, list(range(1, r.dim())))  # channel: dim 0 now
            self.signal = sig if self.signal is None else self.signal + sig
            self.noise = noi if self.noise is None else self.noise + noi

    @property
    def median_db(self) -> Optional[float]:
        """The median over channels with a signal of their SQNR (lower median); None when no
        channel has one."""
        signal, noise = self.signal, self.noise
        if not self.finite or signal is None or noise is None:
            return None
        live = signal > 0
        if not bool(live.any()):
            return None
        ratio = signal[live] / noise[live]  # inf where there is no noise
        return 10.0 * math.log10(float(ratio.median()))


def sqnr_db(signal: float, noise: float) -> Optional[float]:
    """SQNR in dB from energies: inf when there is no noise, None when it means nothing (no
    signal, or sums that overflowed)."""
    if not (math.isfinite(signal) and math.isfinite(noise)) or signal <= 0:
        return None
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise)


def channel_spread(w: torch.Tensor) -> Optional[float]:
    """max / median over output channels of max |w| of the channel: how much a per-tensor scale
    wastes on the typical channel (1 = even; None for a single channel or a zero median)."""
    if w.dim() < 2 or w.shape[0] < 2:
        return None
    amax = w.detach().to(torch.float64).abs().reshape(w.shape[0], -1).amax(dim=1)
    med = float(amax.median())
    if not (med > 0 and math.isfinite(med)):
        return None
    return float(amax.max()) / med
