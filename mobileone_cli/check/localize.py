"""Where two MobileOnes part: block-by-block comparison against a reference (train) model.

Both forms name their blocks alike (``stage0``, ``stage1.0``, ... ``stage4.1``, then the head
``linear``), so forward hooks pair them up by name.  For a candidate model C (the deploy model,
or a copy of it with perturbed weights) and a base B (the train model, or the deploy model) each
block gets two numbers:

* ``own`` -- C's block fed the *train* model's input of that block, against B's block on the same
  input: the block's own error, free of anything upstream.
* ``end to end`` -- the block's output in C against B, both fed the same images: how far apart
  the networks are at that depth.

Errors are absolute; :class:`BlockError` relates them to max |train block output|.
"""
from __future__ import annotations

import math

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["BlockError", "StageError", "compared_modules", "run_train", "run_candidate",
           "stage_table", "stage_label", "HEAD"]

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
    out = [(b.name, b.stage, mods[b.name]) for b in model.arch.block_specs()]
    if getattr(model, HEAD, None) is not None:
        out.append((HEAD, model.arch.num_stages + 1, mods[HEAD]))
    return out


class _Capture:
    """Forward hooks that keep each block's input and output for the duration of a ``with``.

    A block's input is the previous block's output (the same tensor), so this costs one set of
    activations, not two."""

    def __init__(self, model: nn.Module, inputs: bool) -> None:
        self.units = compared_modules(model)
        self.keep_inputs = inputs
        self.inputs: Dict[str, torch.Tensor] = {}
        self.outputs: Dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "_Capture":
        for name, _, mod in self.units:
            self._handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def keep(_mod, inp, out):
            if self.keep_inputs:
                self.inputs[name] = inp[0].detach()
            self.outputs[name] = out.detach()
        return keep

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64).reshape(t.shape[0], -1)


def _update(err: BlockError, base_e2e: torch.Tensor, e2e: torch.Tensor, base_own: torch.Tensor,
            own: torch.Tensor, train_out: torch.Tensor) -> None:
    # Differences in float64 (exact for float32 inputs); each tensor converted once (the train
    # run's output is often both references).  A NaN or Inf in any input makes its difference's
    # max NaN or Inf (max propagates NaN), so the maxima tell whether all four were finite.
    r, o = _flat(base_e2e), _flat(e2e)
    ro, s = (r if base_own is base_e2e else _flat(base_own)), _flat(own)
    max_abs, own_abs = float((r - o).abs().max()), float((ro - s).abs().max())
    if not (math.isfinite(max_abs) and math.isfinite(own_abs)):
        err.finite = False
        return
    err.max_abs = max(err.max_abs, max_abs)
    err.own_abs = max(err.own_abs, own_abs)
    # abs and max are exact in any dtype
    err.scale = max(err.scale, float((r if train_out is base_e2e else train_out).abs().max()))
    if r.shape[1] > 0:
        cos = torch.nn.functional.cosine_similarity(r, o, dim=1)
        err.cosine = min(err.cosine, float(cos.min()))


@torch.no_grad()
def run_train(train: nn.Module, x: torch.Tensor) -> Tuple["_Capture", torch.Tensor]:
    """The train model on ``x``, every block's input and output kept (the references)."""
    with _Capture(train, inputs=True) as tc:
        out = train(x)
    return tc, out


@torch.no_grad()
def run_candidate(model: nn.Module, x: torch.Tensor, tc: "_Capture",
                  errors: Dict[str, BlockError],
                  base: Optional[Tuple[nn.Module, Dict[str, torch.Tensor]]] = None
                  ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Run ``model`` on ``x`` and accumulate its block errors into ``errors``.

    Compared with the train run ``tc``, or with ``base`` = (another model, its end-to-end block
    outputs on the same ``x``): a perturbed deploy model against the deploy model.  Each block's
    own output is computed on the train model's input of that block and dropped at once.
    Returns the final output and the end-to-end block outputs.
    """
    with _Capture(model, inputs=False) as cc:
        out = model(x)
    mods = {n: m for n, _, m in cc.units}
    base_mods = {n: m for n, _, m in compared_modules(base[0])} if base is not None else None
    # The hooks are gone: these calls record nothing and cannot recurse.
    for block, stage, _ in tc.units:
        ref = tc.outputs[block]
        own = mods[block](tc.inputs[block])
        if base is None:
            base_e2e, base_own = ref, ref
        else:
            base_e2e, base_own = base[1][block], base_mods[block](tc.inputs[block])
        err = errors.setdefault(block, BlockError(block, stage))
        _update(err, base_e2e, cc.outputs[block], base_own, own, ref)
        del own, base_own
    return out, cc.outputs


def stage_table(errors: Sequence[BlockError], bad: Sequence[str]) -> List[StageError]:
    """One row per stage (stem first, head last): error at its output and its worst block;
    ``bad`` names the blocks outside their bound."""
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
                               within=not any(e.name in bad_set for e in blocks)))
    return rows
