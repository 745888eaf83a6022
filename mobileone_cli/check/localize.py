"""Where two MobileOnes part: block-by-block comparison against a reference (train) model.

Both forms name their blocks alike (``stage0``, ``stage1.0``, ... ``stage4.1``, then the head
``linear``), so the models are run side by side, block by block, in forward order
(:func:`lockstep`): only the current block's activations are alive, never a stored copy of every
block's output.  For a candidate model C (the deploy model, or a copy of it with perturbed
weights) and a base B (the train model, or the deploy model) each block gets two numbers:

* ``own`` -- C's block fed the *train* model's input of that block, against B's block on the same
  input: the block's own error, free of anything upstream.
* ``end to end`` -- the block's output in C against B, both fed the same images: how far apart
  the networks are at that depth.

Errors are absolute; :class:`BlockError` relates them to max |train block output|.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..arch.specs import ArchSpec
from .harness import perturb_module

__all__ = ["BlockError", "StageError", "compared_modules", "head_input", "lockstep",
           "own_errors", "stage_table", "stage_label", "HEAD"]

HEAD = "linear"  # the classifier, compared like a block (stage = number of stages + 1)


@dataclass
class BlockError:
    """How far a candidate's block is from the base's; relative numbers are to max |train|."""

    name: str
    stage: int
    max_abs: float = 0.0  # end to end
    scale: float = 0.0  # max |train block output|
    cosine: float = 1.0  # lowest per-image cosine similarity, end to end
    own_abs: float = 0.0  # the candidate's block on the train block's input
    finite: bool = True

    @property
    def max_rel(self) -> float:
        return _rel(self.max_abs, self.scale, self.finite)

    @property
    def own_rel(self) -> float:
        return _rel(self.own_abs, self.scale, self.finite)

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d.update(max_rel=self.max_rel, own_rel=self.own_rel)
        return d


@dataclass
class StageError:
    """One row of the per-stage table: the stage's output and its worst block."""

    name: str  # 'stem', 'stage1', ..., 'head'
    blocks: int
    max_rel: float  # end-to-end error at the stage's last block
    worst_block: str  # the block with the largest own error in the stage
    worst_own_rel: float
    within: bool  # every block of the stage within its bound on its own
    label: str = ""  # the stage as the deploy file names it, canonical name beside it
    worst_label: str = ""  # the worst block alike

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _rel(num: float, scale: float, finite: bool) -> float:
    if not finite:
        return float("inf")
    if scale > 0:
        return num / scale
    return 0.0 if num == 0 else float("inf")


def stage_label(stage: int, num_stages: int = 10 ** 6) -> str:
    if stage == 0:
        return "stem"
    return "head" if stage > num_stages else f"stage{stage}"


def compared_modules(model: nn.Module) -> List[Tuple[str, int, nn.Module]]:
    """(name, stage, module) of every block of our model, then its head, in forward order."""
    mods = dict(model.named_modules())
    # MobileOne.arch; torch's stubs type every module attribute as Tensor | Module.
    arch: ArchSpec = model.arch  # type: ignore[assignment]
    out = [(b.name, b.stage, mods[b.name]) for b in arch.block_specs()]
    if getattr(model, HEAD, None) is not None:
        out.append((HEAD, arch.num_stages + 1, mods[HEAD]))
    return out


def _update(err: BlockError, base_e2e: torch.Tensor, e2e: torch.Tensor, base_own: torch.Tensor,
            own: torch.Tensor, train_out: torch.Tensor, cosine: bool = True) -> None:
    # Differences in the run's dtype: two floats within a factor 2 of each other subtract
    # exactly (Sterbenz), so the small differences a verdict turns on are exact, and abs and max
    # are exact in any dtype.  A NaN or Inf in any input makes its difference's max NaN or Inf
    # (max propagates NaN), so the maxima tell whether all four were finite.
    delta = base_e2e - e2e
    max_abs = float(delta.abs().max())
    own_abs = (max_abs if own is e2e and base_own is base_e2e
               else float((base_own - own).abs().max()))
    if not (math.isfinite(max_abs) and math.isfinite(own_abs)):
        err.finite = False
        return
    err.max_abs = max(err.max_abs, max_abs)
    err.own_abs = max(err.own_abs, own_abs)
    err.scale = max(err.scale, float(train_out.abs().max()))
    if cosine and base_e2e[0].numel() > 0:
        err.cosine = min(err.cosine, float(cosines(base_e2e, delta).min()))


def cosines(ref: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per image, the cosine similarity of ``ref`` and ``ref - delta``, in float64.

    From the exact difference: 1 - cos = (|r|^2 |d|^2 - (r.d)^2) / (|r||o| (|r||o| + r.o)),
    which keeps the digits a direct float64 cosine loses near 1, without a float64 copy of
    either activation (the sums accumulate in float64).  Identical zero outputs count as 1."""
    r, d = ref.reshape(ref.shape[0], -1), delta.reshape(delta.shape[0], -1)

    def dot(a, b):
        return torch.sum(a * b, 1, dtype=torch.float64)

    rr, dd, rd = dot(r, r), dot(d, d), dot(r, d)
    ro = rr - rd  # r.o
    norms = (rr * (rr - 2 * rd + dd).clamp_min(0)).sqrt()  # |r||o|
    near = 1 - (rr * dd - rd * rd).clamp_min(0) / (norms * (norms + ro))
    cos = torch.where(ro > 0, near, ro / norms)
    return torch.where(norms > 0, cos, (dd == 0).to(torch.float64)).clamp(-1, 1)


def _in_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` itself when its floating tensors are ``dtype``, else a copy cast to it: only
    the block being run exists in the stage's precision."""
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return module
    return copy.deepcopy(module).to(dtype)


def _kept(keep: Optional[Dict[Tuple[str, str], nn.Module]], role: str, name: str,
          make: Callable[[], nn.Module]) -> nn.Module:
    """``make()``, made once per (role, block) when ``keep`` holds blocks across chunks."""
    if keep is None:
        return make()
    if (role, name) not in keep:
        keep[role, name] = make()
    return keep[role, name]


@torch.no_grad()
def lockstep(train: nn.Module, deploy: nn.Module, x: torch.Tensor,
             errors: Dict[str, Dict[str, BlockError]], *, unit: Optional[float] = None,
             keep: Optional[Dict[Tuple[str, str], nn.Module]] = None
             ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Run the train model T, the deploy model D and, with ``unit``, P (D with every weight
    perturbed by ``unit``, :func:`~.harness.perturb_module`) block by block on ``x``, in
    ``x``'s dtype, and accumulate the block errors: ``errors['deploy']`` (D against T) and
    ``errors['perturbed']`` (P against D, both fed the same inputs).

    Only the current block's activations are alive, and each block exists in ``x``'s dtype only
    while it runs (``keep``: a dict that holds the cast and perturbed blocks for the next chunk
    of images).  Returns the outputs of T, D and P (None without ``unit``): the same tensors
    the models' own forward gives, since the blocks run in forward order.
    """
    dtype = x.dtype
    t = d = x
    p: Optional[torch.Tensor] = x

    def block(role: str, name: str, make) -> nn.Module:
        return _kept(keep, role, name, make)

    for (name, stage, t_mod), (_, _, d_mod) in zip(compared_modules(train),
                                                  compared_modules(deploy)):
        if name == HEAD:  # the head takes the pooled, flattened features
            t, d = head_input(train, t), head_input(deploy, d)
            p = head_input(deploy, p) if unit is not None and p is not None else None
        t_blk = block("train", name, lambda m=t_mod: _in_dtype(m, dtype))
        d_blk = block("deploy", name, lambda m=d_mod: _in_dtype(m, dtype))
        t_out = t_blk(t)
        d_out = d_blk(d)
        d_own = d_out if d is t else d_blk(t)
        _update(errors["deploy"].setdefault(name, BlockError(name, stage)),
                t_out, d_out, t_out, d_own, t_out)
        if unit is not None:
            p_blk = block("perturbed", name,
                          lambda m=d_blk, n=name: perturb_module(m, n, unit))
            p_out = p_blk(p)
            p_own = p_out if p is t else p_blk(t)
            _update(errors["perturbed"].setdefault(name, BlockError(name, stage)),
                    d_out, p_out, d_own, p_own, t_out, cosine=False)
            p = p_out
        t, d = t_out, d_out
    return t, d, (p if unit is not None else None)


@torch.no_grad()
def own_errors(train: nn.Module, deploy: nn.Module, x: torch.Tensor, names: Sequence[str],
               dtype: torch.dtype, errors: Dict[str, Dict[str, BlockError]], *,
               unit: Optional[float] = None,
               keep: Optional[Dict[Tuple[str, str], nn.Module]] = None,
               stop: Optional[Callable[[str], bool]] = None) -> None:
    """The own errors of blocks ``names`` alone, in ``dtype``: the train model runs in ``x``'s
    dtype up to the last of them, and each named block of T, D (and P, with ``unit``) is fed T's
    input of that block cast to ``dtype``.  Accumulates ``own_abs`` and ``scale`` into
    ``errors['deploy']`` (D against T) and ``errors['perturbed']`` (P against D), as
    :func:`lockstep` does, at the cost of one train pass plus the named blocks.
    ``stop(name)``, asked after each named block, ends the run there."""
    wanted = set(names)
    t = x

    def block(role: str, name: str, make) -> nn.Module:
        return _kept(keep, role, name, make)

    for (name, stage, t_mod), (_, _, d_mod) in zip(compared_modules(train),
                                                  compared_modules(deploy)):
        if not wanted:
            return
        if name == HEAD:
            t = head_input(train, t)
        t_run = block("train", name, lambda m=t_mod: _in_dtype(m, x.dtype))
        if name in wanted:
            wanted.discard(name)
            ti = t.to(dtype)
            t_blk = block("train@", name, lambda m=t_mod: _in_dtype(m, dtype))
            d_blk = block("deploy@", name, lambda m=d_mod: _in_dtype(m, dtype))
            t_out, d_own = t_blk(ti), d_blk(ti)
            _update(errors["deploy"].setdefault(name, BlockError(name, stage)),
                    t_out, d_own, t_out, d_own, t_out, cosine=False)
            if unit is not None:
                p_blk = block("perturbed@", name,
                              lambda m=d_blk, n=name: perturb_module(m, n, unit))
                p_own = p_blk(ti)
                _update(errors["perturbed"].setdefault(name, BlockError(name, stage)),
                        d_own, p_own, d_own, p_own, t_out, cosine=False)
            if stop is not None and stop(name):
                return
        if wanted:
            t = t_run(t)


def head_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the model's head is fed (MobileOne.forward: flatten(gap(features)))."""
    # torch's stubs type every module attribute as Tensor | Module.
    gap: nn.Module = model.gap  # type: ignore[assignment]
    return torch.flatten(gap(x), 1)


def stage_table(errors: Sequence[BlockError], bad: Sequence[str],
                names: Optional[Mapping[str, str]] = None) -> List[StageError]:
    """One row per stage (stem first, head last): error at its output and its worst block;
    ``bad`` names the blocks outside their bound, ``names`` how the file names blocks and
    stages (:func:`~..arch.layouts.in_layout`)."""
    from ..arch.layouts import in_layout

    names = names or {}
    rows: List[StageError] = []
    stages = sorted({e.stage for e in errors})
    num_stages = max(e.stage for e in errors if e.name != HEAD) if errors else 0
    bad_set = set(bad)
    for s in stages:
        blocks = [e for e in errors if e.stage == s]
        worst = max(blocks, key=lambda e: e.own_rel)
        rows.append(StageError(name=stage_label(s, num_stages), blocks=len(blocks),
                               max_rel=blocks[-1].max_rel, worst_block=worst.name,
                               worst_own_rel=worst.own_rel,
                               within=not any(e.name in bad_set for e in blocks),
                               label=in_layout(stage_label(s, num_stages), names),
                               worst_label=in_layout(worst.name, names)))
    return rows
