"""Running totals of an evaluation: accuracy against labels, agreement with a reference model.

Each batch's outputs are folded in and dropped, so a pass over any number of images keeps a
fixed amount of state: counters per class, maxima, and at most MAX_LISTED named images.
Differences are computed in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from ..rules.limits import MAX_LISTED

__all__ = ["Accuracy", "Agreement", "Disagreement", "topk_of"]


def topk_of(num_classes: int) -> int:
    """The k of 'top-5' for a head with ``num_classes`` outputs."""
    return min(5, num_classes)


class Accuracy:
    """Top-1 and top-k hits of one model's logits against labels, per class."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.k = topk_of(num_classes)
        self.images = torch.zeros(num_classes, dtype=torch.int64)
        self.top1_hits = torch.zeros(num_classes, dtype=torch.int64)
        self.topk_hits = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Fold one batch in; returns its top-1 predictions."""
        logits = logits.detach().reshape(logits.shape[0], -1).to(torch.float64)
        top = logits.topk(self.k, dim=1).indices  # sorted: column 0 is the top-1
        hit1 = top[:, 0] == labels
        hitk = (top == labels[:, None]).any(dim=1)
        self.images += torch.bincount(labels, minlength=self.num_classes)
        self.top1_hits += torch.bincount(labels[hit1], minlength=self.num_classes)
        self.topk_hits += torch.bincount(labels[hitk], minlength=self.num_classes)
        return top[:, 0]

    @property
    def total(self) -> int:
        return int(self.images.sum())

    @property
    def top1(self) -> Optional[float]:
        return int(self.top1_hits.sum()) / self.total if self.total else None

    @property
    def topk(self) -> Optional[float]:
        return int(self.topk_hits.sum()) / self.total if self.total else None

    def per_class(self, names: Sequence[str]) -> List[Dict[str, object]]:
        """Classes that have images: index, name, images, top-1, top-k (fractions)."""
        out = []
        for c in torch.nonzero(self.images).flatten().tolist():
            n = int(self.images[c])
            out.append({"class": c, "name": names[c] if c < len(names) else str(c),
                        "images": n, "top1": int(self.top1_hits[c]) / n,
                        f"top{self.k}": int(self.topk_hits[c]) / n})
        return out


@dataclass
class Disagreement:
    """An image on which a model's top-1 differs from the reference's."""

    name: str
    label: int  # -1: unlabelled
    reference: int  # the reference model's top-1
    prediction: int  # this model's top-1


@dataclass
class Agreement:
    """How far one model's outputs are from the reference model's, over every image seen."""

    logits: bool  # outputs are logits (else feature maps: no top-1)
    images: int = 0
    top1_agree: int = 0
    max_abs: float = 0.0  # largest |output - reference output| of any element
    scale: float = 0.0  # largest |reference output|
    min_cosine: float = 1.0  # smallest per-image cosine similarity
    non_finite: int = 0  # images whose output (or the reference's) holds NaN/Inf
    disagreements: List[Disagreement] = field(default_factory=list)  # at most MAX_LISTED
    disagreeing: int = 0  # all of them, listed or not

    def update(self, ref: torch.Tensor, out: torch.Tensor, names: Sequence[str],
               labels: torch.Tensor, ref_top1: Optional[torch.Tensor] = None,
               out_top1: Optional[torch.Tensor] = None) -> None:
        """Fold one batch in; ``*_top1``: predictions already computed (the same tie-breaking
        as the accuracy's)."""
        r = ref.detach().to(torch.float64).reshape(ref.shape[0], -1)
        o = out.detach().to(torch.float64).reshape(out.shape[0], -1)
        if r.shape != o.shape:
            raise ValueError(f"output shape {list(out.shape)} differs from the reference's "
                             f"{list(ref.shape)}")
        finite = torch.isfinite(o).all(dim=1) & torch.isfinite(r).all(dim=1)
        self.images += r.shape[0]
        self.non_finite += int((~finite).sum())
        if bool(finite.any()) and r.shape[1]:
            self.scale = max(self.scale, float(r[finite].abs().max()))
            self.max_abs = max(self.max_abs, float((r[finite] - o[finite]).abs().max()))
        if not bool(finite.all()):
            self.max_abs = math.inf
        cos = torch.nn.functional.cosine_similarity(r, o, dim=1)
        cos = torch.where(finite, cos, torch.full_like(cos, -1.0))
        if cos.numel():
            self.min_cosine = min(self.min_cosine, float(cos.min()))
        if not self.logits:
            return
        rt = r.argmax(1) if ref_top1 is None else ref_top1
        ot = o.argmax(1) if out_top1 is None else out_top1
        same = (rt == ot) & finite
        self.top1_agree += int(same.sum())
        for i in torch.nonzero(~same).flatten().tolist():
            self.disagreeing += 1
            if len(self.disagreements) < MAX_LISTED:
                self.disagreements.append(Disagreement(names[i], int(labels[i]), int(rt[i]),
                                                       int(ot[i])))

    @property
    def agreement(self) -> Optional[float]:
        return self.top1_agree / self.images if self.logits and self.images else None

    @property
    def max_rel(self) -> float:
        if self.scale > 0:
            return self.max_abs / self.scale
        return 0.0 if self.max_abs == 0 else math.inf
