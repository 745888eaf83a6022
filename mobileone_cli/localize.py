"""Where two MobileOnes part: block-by-block comparison of a train and a deploy model.

Both forms name their blocks alike (``stage0``, ``stage1.0``, ... ``stage4.1``, then the head
``linear``), so forward hooks on the two models pair up by name.  Each block gets two numbers,
both relative to max |train block output|:

* ``own_rel`` -- the deploy block fed the *train* model's input of that block, against the train
  block: the block's own error, free of anything upstream.  The first block whose own error is
  above tolerance is the block that breaks (``first_bad_block``).
* ``max_rel`` -- the block's output in the deploy model against the train model, both fed the
  same images end to end: how far apart the networks are at that depth (``first_divergent``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["BlockError", "StageError", "BlockTracker", "compared_modules", "stage_table",
           "first_bad_block", "first_divergent", "stage_label", "HEAD"]

HEAD = "linear"  # the classifier, compared like a block (stage = number of stages + 1)


@dataclass
class BlockError:
    """How far one deploy block is from its train block; relative numbers are to max |train|."""

    name: str
    stage: int
    max_abs: float = 0.0  # end to end
    scale: float = 0.0  # max |train block output|
    cosine: float = 1.0  # lowest per-image cosine similarity, end to end
    own_abs: float = 0.0  # deploy block on the train block's input
    finite: bool = True

    @property
    def max_rel(self) -> float:
        return _rel(self.max_abs, self.scale, self.finite)

    @property
    def own_rel(self) -> float:
        return _rel(self.own_abs, self.scale, self.finite)

    def within(self, rtol: float, atol: float = 0.0) -> bool:
        """End to end within tolerance."""
        return self.finite and self.max_abs <= atol + rtol * self.scale

    def own_within(self, rtol: float, atol: float = 0.0) -> bool:
        """The block's own error within tolerance."""
        return self.finite and self.own_abs <= atol + rtol * self.scale

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
    within: bool  # every block of the stage within tolerance on its own

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

    def __init__(self, model: nn.Module) -> None:
        self.units = compared_modules(model)
        self.inputs: Dict[str, torch.Tensor] = {}
        self.outputs: Dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "_Capture":
        for name, _, mod in self.units:
            self._handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def keep(_mod, inp, out):
            self.inputs[name] = inp[0].detach()
            self.outputs[name] = out.detach()
        return keep

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class BlockTracker:
    """Accumulates per-block errors of ``deploy`` against ``train`` over one or more batches."""

    def __init__(self, train: nn.Module, deploy: nn.Module) -> None:
        self.train = train
        self.deploy = deploy
        self.errors: Dict[str, BlockError] = {
            name: BlockError(name, stage) for name, stage, _ in compared_modules(train)}

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Final outputs (train, deploy) of one batch, updating the block errors on the way."""
        with _Capture(self.train) as tc:
            ref = self.train(x)
        with _Capture(self.deploy) as dc:
            out = self.deploy(x)
        deploy_mods = {name: mod for name, _, mod in dc.units}
        for name in self.errors:
            # The hooks are gone: this call records nothing and cannot recurse.
            own = deploy_mods[name](tc.inputs[name])
            self._update(self.errors[name], tc.outputs[name], dc.outputs[name], own)
        return ref, out

    @staticmethod
    def _update(err: BlockError, ref: torch.Tensor, out: torch.Tensor, own: torch.Tensor) -> None:
        r = ref.to(torch.float64).reshape(ref.shape[0], -1)
        o = out.to(torch.float64).reshape(out.shape[0], -1)
        s = own.to(torch.float64).reshape(own.shape[0], -1)
        if not (torch.isfinite(o).all() and torch.isfinite(r).all() and torch.isfinite(s).all()):
            err.finite = False
            return
        err.max_abs = max(err.max_abs, float((r - o).abs().max()))
        err.own_abs = max(err.own_abs, float((r - s).abs().max()))
        err.scale = max(err.scale, float(r.abs().max()))
        cos = torch.nn.functional.cosine_similarity(r, o, dim=1)
        err.cosine = min(err.cosine, float(cos.min()))

    def results(self) -> List[BlockError]:
        return list(self.errors.values())


def first_bad_block(errors: Sequence[BlockError], rtol: float,
                    atol: float = 0.0) -> Optional[BlockError]:
    """The first block, in forward order, whose OWN error exceeds the tolerance: it breaks."""
    return next((e for e in errors if not e.own_within(rtol, atol)), None)


def first_divergent(errors: Sequence[BlockError], rtol: float,
                    atol: float = 0.0) -> Optional[BlockError]:
    """The first block whose end-to-end error exceeds the tolerance: the networks part there."""
    return next((e for e in errors if not e.within(rtol, atol)), None)


def stage_table(errors: Sequence[BlockError], rtol: float, atol: float = 0.0) -> List[StageError]:
    """One row per stage (stem first, head last): error at its output and its worst block."""
    rows: List[StageError] = []
    stages = sorted({e.stage for e in errors})
    num_stages = max(e.stage for e in errors if e.name != HEAD) if errors else 0
    for s in stages:
        blocks = [e for e in errors if e.stage == s]
        worst = max(blocks, key=lambda e: e.own_rel)
        rows.append(StageError(name=stage_label(s, num_stages), blocks=len(blocks),
                               max_rel=blocks[-1].max_rel, worst_block=worst.name,
                               worst_own_rel=worst.own_rel,
                               within=all(e.own_within(rtol, atol) for e in blocks)))
    return rows
