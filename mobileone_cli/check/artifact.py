"""An exported artifact against our PyTorch deploy model: executed in its runtime, or (Core ML
off macOS) its stored weights read back.

Reference: our deploy model in float64 holding exactly the artifact's weights (the deploy
weights rounded as the target stores them, e.g. fp16), on seeded images rounded as the artifact
takes them.  The fusion itself (train vs deploy) is judged before, by :func:`.verdict.judge`.

The bound follows the network, like the verdict for checkpoints.  An artifact computes in fp32
or fp16; how far that precision moves THIS network's output is measured on our model:

    sensitivity = | our model in the artifact's arithmetic  -  our model in float64 |

fp32 arithmetic is PyTorch's own fp32 forward pass.  fp16 arithmetic is emulated: every module's
output (and the input) rounded to fp16, in float64 (PyTorch's CPU fp16 kernels are far slower,
and the runtimes accumulate fp16 convolutions in fp32 on this CPU, as the emulation does).  The
artifact passes at every checked shape when

    max |artifact - reference| <= rtol * max |reference| + EXPORT_SENSITIVITY_FACTOR * sensitivity

with ``rtol`` = ``EXPORT_RTOL[dtype]``; an explicit ``--rtol`` replaces the whole bound.  The
measured levels are in rules/tolerances.py and docs/export.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..arch.specs import ArchSpec
from ..errors import VerificationFailed
from ..rules.tolerances import EXPORT_RTOL, EXPORT_SENSITIVITY_FACTOR
from .harness import Metrics, compare_outputs, load_model, seeded_inputs

__all__ = ["ShapeCheck", "WeightCheck", "stored_weights", "check_artifact", "check_weights",
           "arithmetic_effect", "check_shapes", "precision_note", "LOOSE_SENSITIVITY"]

# Above this (relative to max |output|), the arithmetic's own effect hides structural errors of
# the size a dropped SE or a 1% bias change makes: the report says so.
LOOSE_SENSITIVITY = 1e-2


@dataclass
class ShapeCheck:
    """The artifact in its runtime against the reference at one input shape."""

    batch: int
    height: int
    width: int
    metrics: Metrics  # artifact vs reference (float64, the artifact's weights)
    tolerance: float  # the bound, relative to max |reference|
    passed: bool
    sensitivity: Optional[Metrics] = None  # our model in the artifact's arithmetic vs float64
    metrics_fp32: Optional[Metrics] = None  # fp16: vs the unrounded deploy weights (total cost)
    arithmetic: str = "float32"  # the precision the sensitivity was measured for
    # 'float64': the full rule against the float64 reference; 'float32': the artifact is within
    # rtol of our fp32 model, which implies the rule (see check_artifact)
    reference: str = "float64"


@dataclass
class WeightCheck:
    """Every stored weight of a package against the deploy weights."""

    compared: int = 0
    max_abs: float = 0.0  # largest difference after rounding the deploy weight to the stored dtype
    missing: List[str] = field(default_factory=list)  # deploy tensors with no constant
    wrong: List[str] = field(default_factory=list)  # constants that differ (value, shape, dtype)
    unexpected: List[str] = field(default_factory=list)  # weight constants of no deploy tensor

    @property
    def passed(self) -> bool:
        return not (self.missing or self.wrong or self.unexpected)

    def to_dict(self) -> Dict[str, Any]:
        return {"compared": self.compared, "max_abs": self.max_abs, "missing": self.missing,
                "wrong": self.wrong, "unexpected": self.unexpected, "passed": self.passed}


def stored_weights(deploy_sd: Mapping[str, torch.Tensor], dtype: str,
                   runtime: str) -> Dict[str, torch.Tensor]:
    """The deploy weights as the ``runtime`` stores them in a ``dtype`` artifact, in float64."""
    from ..runtimes import get_runtime

    stored = get_runtime(runtime).stored_weights(deploy_sd, dtype)
    if stored is not None:
        return stored
    half = dtype == "fp16"
    return {k: (v.to(torch.float16) if half else v.to(torch.float32)).to(torch.float64)
            for k, v in deploy_sd.items()}


@torch.no_grad()
def arithmetic_effect(model64, x64: torch.Tensor, compute: str) -> torch.Tensor:
    """``model64`` (float64) run in ``compute`` arithmetic ('float32': really; 'float16':
    every module output rounded), output upcast to float64."""
    if compute == "float32":
        import copy

        m32 = copy.deepcopy(model64).to(torch.float32)
        return m32(x64.to(torch.float32)).to(torch.float64)
    dt = getattr(torch, compute)
    hooks = [m.register_forward_hook(lambda _m, _i, out: out.to(dt).to(torch.float64))
             for m in model64.modules() if m is not model64]
    try:
        return model64(x64.to(dt).to(torch.float64))
    finally:
        for h in hooks:
            h.remove()


def check_shapes(batch: Optional[int], input_size: Tuple[int, int],
                 dynamic_size: bool) -> List[Tuple[int, int, int]]:
    """The (batch, H, W) shapes an export is checked at: two of each dynamic axis."""
    h, w = input_size
    batches = [1, 3] if batch is None else [batch]
    sizes = [(h, w), (h + 32, w + 64)] if dynamic_size else [(h, w)]
    return [(b, hh, ww) for b in batches for hh, ww in sizes]


def check_artifact(artifact, deploy_sd: Mapping[str, torch.Tensor], arch: ArchSpec,
                   shapes: Sequence[Tuple[int, int, int]], *, dtype: str = "fp32",
                   compute: Optional[str] = None, seed: int = 0,
                   rtol: Optional[float] = None) -> List[ShapeCheck]:
    """Run ``artifact`` (a runtimes.Artifact) and the reference on the same seeded images.

    ``deploy_sd``: the deploy weights (Apple keys) before any rounding; ``dtype``: the export's
    ('fp32'/'fp16'); ``compute``: the artifact's arithmetic ('float32'/'float16', default: the
    dtype's); ``rtol``: a fixed bound instead of the adaptive one.

    The verdict is the rule of the module docstring; the work is only what it needs:

    * fp32 arithmetic first: with ``y32`` our model in fp32 (the very pass the sensitivity is
      measured with), ``|artifact - y32| <= rtol * max|y32|`` implies the rule (triangle
      inequality: ``|artifact - ref| <= |artifact - y32| + sensitivity``, and ``max|y32|`` is
      within the sensitivity of ``max|ref|``), so such a shape passes without the float64
      reference; any other shape goes to the float64 referee and the full rule;
    * fp16 arithmetic: the float64 reference always; the emulated fp16 pass (the sensitivity)
      only where the artifact is beyond ``rtol`` alone;
    * one seeded batch per input size, of the largest batch checked at it: a smaller batch is
      its first images, so one reference pass serves every batch of that size."""
    compute = compute or ("float16" if dtype == "fp16" else "float32")
    base = EXPORT_RTOL[dtype] if rtol is None else rtol
    stored = stored_weights(deploy_sd, dtype, artifact.kind)
    logits = arch.has_head
    sizes: Dict[Tuple[int, int], int] = {}
    for b, h, w in shapes:
        sizes[(h, w)] = max(sizes.get((h, w), 0), b)
    xs = {}
    for j, (hw, b) in enumerate(sizes.items()):
        x = seeded_inputs(seed + j, b, hw, arch.in_channels, torch.float32)
        xs[hw] = x.half() if artifact.input_dtype == "float16" else x
    fast = compute == "float32" and rtol is None
    cache: Dict[Any, Any] = {}

    def out(name: str, hw: Tuple[int, int]) -> torch.Tensor:
        """Output (float64) of reference ``name`` (see _reference) on the batch of size ``hw``:
        each model built once, each pass run once."""
        if (name, hw) not in cache:
            model = "ref64" if name == "fp16" else name
            if model not in cache:
                cache[model] = _reference(model, stored, deploy_sd, arch)
            x64 = xs[hw].to(torch.float64)
            with torch.no_grad():
                if name == "fp16":
                    y = arithmetic_effect(cache[model], x64, compute)
                elif name == "ref64":
                    y = cache[model](x64)
                else:
                    y = cache[model](x64.to(torch.float32)).to(torch.float64)
            cache[(name, hw)] = y
        return cache[(name, hw)]

    results = []
    for b, h, w in shapes:
        x = xs[(h, w)][:b].contiguous()
        got = artifact.run(x)
        first = out("fp32" if fast else "ref64", (h, w))[:b]
        if tuple(got.shape) != tuple(first.shape):
            raise VerificationFailed(f"{artifact.runtime} output shape {list(got.shape)} differs "
                                     f"from PyTorch's {list(first.shape)} at input "
                                     f"{[b, arch.in_channels, h, w]}")
        vs_fp32 = (compare_outputs(out("full32", (h, w))[:b], got, logits=logits)
                   if dtype == "fp16" else None)
        m = compare_outputs(first, got, logits=logits)
        within = m.finite and m.max_abs <= base * m.scale
        if fast and within:
            results.append(ShapeCheck(batch=b, height=h, width=w, metrics=m, tolerance=base,
                                      passed=True, metrics_fp32=vs_fp32, arithmetic=compute,
                                      reference="float32"))
            continue
        if fast:  # the float64 referee decides; the fp32 pass is its sensitivity
            want = out("ref64", (h, w))[:b]
            m = compare_outputs(want, got, logits=logits)
            within = m.finite and m.max_abs <= base * m.scale
        sens = None
        bound = base * m.scale
        if rtol is None and (fast or not within):  # fast: the fp32 pass is already there
            sens = compare_outputs(out("ref64", (h, w))[:b],
                                   out("fp32" if fast else "fp16", (h, w))[:b], logits=logits)
            bound += EXPORT_SENSITIVITY_FACTOR * (sens.max_abs if sens.finite else math.inf)
        tol = bound / m.scale if m.scale > 0 else base
        results.append(ShapeCheck(batch=b, height=h, width=w, metrics=m, tolerance=tol,
                                  passed=m.finite and m.max_abs <= bound, sensitivity=sens,
                                  metrics_fp32=vs_fp32, arithmetic=compute))
    return results


def _reference(name: str, stored, deploy_sd, arch: ArchSpec):
    """'ref64': our deploy model in float64 holding the artifact's weights; 'fp32': the same
    weights in fp32 (the fp32 arithmetic, as the sensitivity measures it); 'full32': the
    unrounded deploy weights in fp32 (what an fp16 artifact costs in all, for the report);
    fp16 arithmetic is emulated on 'ref64'."""
    if name == "ref64":
        return load_model(stored, arch, "deploy", dtype=torch.float64)
    return load_model(stored if name == "fp32" else deploy_sd, arch, "deploy",
                      dtype=torch.float32)


def precision_note(checks: Sequence[ShapeCheck]) -> Optional[str]:
    """A note when the artifact's arithmetic alone moves this network's output so much that the
    check cannot tell a subtle graph error from rounding."""
    sens = [c.sensitivity.max_rel for c in checks if c.sensitivity is not None]
    if not sens or max(sens) <= LOOSE_SENSITIVITY:
        return None
    prec = "fp16" if checks[0].arithmetic == "float16" else "fp32"
    return (f"{prec} arithmetic alone moves this network's output by up to {max(sens):.1e} of "
            f"its max (measured on the PyTorch model), so the bound is that loose: the check "
            f"proves the artifact runs and agrees with {prec} rounding, not that every block is "
            f"right; an fp32 export checks the graph itself")


def check_weights(stored: Mapping[str, Any], deploy_sd: Mapping[str, torch.Tensor],
                  names: Mapping[str, str], dtype: str) -> WeightCheck:
    """Compare weights read back from a package (``stored``: {constant name: numpy array})
    with ``deploy_sd``; ``names`` maps each deploy key to its constant's name.  A stored
    weight must equal the deploy weight rounded to ``dtype`` exactly, in shape and dtype."""
    import numpy as np

    want_dtype = np.float16 if dtype == "fp16" else np.float32
    res = WeightCheck()
    used = set()
    for key, tensor in deploy_sd.items():
        name = names[key]
        arr = stored.get(name)
        if arr is None:
            res.missing.append(key)
            continue
        used.add(name)
        want = tensor.detach().to(torch.float16 if dtype == "fp16" else torch.float32).numpy()
        if arr.dtype != want_dtype or tuple(arr.shape) != tuple(want.shape):
            res.wrong.append(f"{key} ({arr.dtype}{list(arr.shape)}, expected "
                             f"{np.dtype(want_dtype)}{list(want.shape)})")
            continue
        res.compared += 1
        diff = float(np.abs(arr.astype(np.float64) - want.astype(np.float64)).max()) \
            if arr.size else 0.0
        if not (diff == 0.0 and np.array_equal(arr, want, equal_nan=True)):
            res.wrong.append(f"{key} (max abs diff {diff:.3g})")
        res.max_abs = max(res.max_abs, diff if math.isfinite(diff) else math.inf)
    # Weight-sized constants that no deploy tensor accounts for: a graph holding more than
    # the model (small ones are shapes, axes and epsilons of the conversion).
    res.unexpected = sorted(n for n, a in stored.items() if n not in used and a.ndim >= 1
                            and a.size >= 8)
    return res
