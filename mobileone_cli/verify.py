"""Equivalence of a train-form and a deploy-form MobileOne, measured on real forward passes.

Both models are always built from state dicts with strict loading and run in eval mode (running
statistics), which is the only mode in which fusion is an identity.  Metrics are relative to the
scale of the reference output so that one tolerance fits every variant.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from .arch import ArchSpec
from .layouts import remap

__all__ = ["Metrics", "compare_outputs", "load_model", "check_equivalence", "seeded_inputs",
           "DEFAULT_RTOL", "DEFAULT_ATOL"]

# Relative to max |reference output|.  Honest fp32 fusion of s0..s4 lands at ~1e-6; a perturbed
# block or a wrong eps lands orders of magnitude above.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 0.0


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


def load_model(state_dict: Mapping[str, torch.Tensor], arch: ArchSpec, form: str, *,
               layout: str = "apple", bn_eps: Optional[float] = None,
               device: str = "cpu", dtype: Optional[torch.dtype] = None):
    """Our MobileOne in eval mode holding ``state_dict`` (strict; shares memory when it can)."""
    from .model import MobileOne

    apple_sd = remap(state_dict, arch, layout, "apple", form)
    model = MobileOne(arch, deploy=(form == "deploy"), bn_eps=bn_eps)
    first = next(iter(apple_sd.values()))
    target = dtype or first.dtype
    apple_sd = {k: (v.to(device=device, dtype=target) if v.is_floating_point() else v.to(device))
                for k, v in apple_sd.items()}
    model.load_state_dict(apple_sd, strict=True, assign=True)
    return model.eval()


def seeded_inputs(seed: int = 0, batch: int = 1, input_size: Sequence[int] = (224, 224),
                  channels: int = 3, dtype: torch.dtype = torch.float32,
                  device: str = "cpu") -> torch.Tensor:
    """Standard-normal images from a private generator: same seed, same images, everywhere."""
    g = torch.Generator().manual_seed(seed)
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return torch.randn(batch, channels, h, w, generator=g, dtype=torch.float64).to(
        device=device, dtype=dtype)


@torch.no_grad()
def check_equivalence(train_sd: Mapping[str, torch.Tensor], deploy_sd: Mapping[str, torch.Tensor],
                      arch: ArchSpec, *, layout: str = "apple", deploy_layout: Optional[str] = None,
                      bn_eps: Optional[float] = None, seed: int = 0, batch: int = 1,
                      input_size: Tuple[int, int] = (224, 224), device: str = "cpu",
                      images: Optional[torch.Tensor] = None) -> Metrics:
    """Run both forms on the same seeded images in eval mode and compare their outputs."""
    train = load_model(train_sd, arch, "train", layout=layout, bn_eps=bn_eps, device=device)
    deploy = load_model(deploy_sd, arch, "deploy", layout=deploy_layout or layout,
                        device=device, dtype=next(iter(train.parameters())).dtype)
    dtype = next(iter(train.parameters())).dtype
    x = images.to(device=device, dtype=dtype) if images is not None else seeded_inputs(
        seed, batch, input_size, arch.in_channels, dtype, device)
    ref = train(x)
    out = deploy(x)
    return compare_outputs(ref, out, logits=arch.has_head)
