"""The one verdict rule that convert, verify and export share (:func:`judge`).

The verdict: a deploy model D computes the train model T's function when, at the output and in
every block (each fed the train model's input, see :mod:`.localize`), it is no further from T than

    atol + rtol * max|T| + SENSITIVITY_FACTOR * (distance between D and D with every weight
                                                 perturbed by one unit roundoff of D's dtype)

The last term is the network's own sensitivity to rounding D's weights, measured on D itself
(never on the fusion code under test): ~0 for fp32 weights of a well-conditioned network, the
size of honest fp16/bf16 rounding for half-precision files, and large where the network amplifies
rounding.  It is measured on the same images, in the same block-by-block pass (two more runs of
each deploy block), and counts only where D is beyond ``atol + rtol * scale``.  An explicit
``rtol`` drops it: the user's tolerance is the tolerance.

The comparison runs in fp32 first.  When fp32 cannot decide (D beyond its bound), a float64 run
of both models on the same inputs (D's weights upcast exactly) referees: fp32 rounding amplified
by an ill-conditioned network (activations ~1e9, saturated SE gates) disappears there, while a
wrong fusion does not.  Only the referee can fail a check, and block localization uses it too,
so an innocent block is never named.  For a failing check the referee first judges only the blocks
fp32 put beyond their bound, each alone on the train model's input of it (one fp32 train pass and
a few float64 blocks, wherever the block lies); the whole float64 pass runs only when none of them
stays beyond its bound there.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..arch.layouts import block_names, in_layout, stage_names
from ..arch.specs import ArchSpec
from ..errors import BadInput
from ..rules.tolerances import DEFAULT_ATOL, DEFAULT_RTOL, SENSITIVITY_FACTOR, UNIT_ROUNDOFF
from ..timing import step
from .harness import CHUNK, Metrics, compare_outputs, float_dtype, load_model, per_pass, strict_fp32
from .localize import BlockError, lockstep, own_errors

__all__ = ["Stage", "Verdict", "judge", "non_finite"]


@dataclass
class Stage:
    """One precision's comparison: D against T, and D's sensitivity (D perturbed, against D)."""

    precision: str  # 'fp32' or 'fp64'
    output: Metrics  # deploy vs train at the output
    blocks: List[BlockError]  # deploy vs train, per block, forward order
    sensitivity: Optional[Metrics] = None  # perturbed deploy vs deploy at the output
    block_sensitivity: Dict[str, BlockError] = field(default_factory=dict)
    bad_blocks: List[str] = field(default_factory=list)  # blocks beyond their own bound
    output_bound: float = 0.0  # absolute bound at the output
    block_bounds: Dict[str, float] = field(default_factory=dict)  # absolute bound of each block
    train_output: Optional[torch.Tensor] = field(default=None, repr=False)
    # The referee of a failing check that judged only fp32's bad blocks, each alone: their
    # names; every other number of the stage (other blocks, the output) is then fp32's.
    alone: List[str] = field(default_factory=list)

    @property
    def output_within(self) -> bool:
        return self.output.finite and self.output.max_abs <= self.output_bound

    @property
    def passed(self) -> bool:
        return self.output_within and not self.bad_blocks


@dataclass
class Verdict:
    """The decision on one deploy model, and every number behind it."""

    rtol: float
    atol: float
    adaptive: bool  # the sensitivity term was allowed (no explicit --rtol)
    deploy_dtype: str
    unit: float  # unit roundoff of the deploy dtype (size of the perturbation)
    compared: str  # 'logits' or 'feature map'
    fp32: Stage
    fp64: Optional[Stage] = None  # the referee, when fp32 could not decide
    train_fp32_vs_fp64: Optional[Metrics] = None  # how far fp32 arithmetic moves the train model
    images: int = 0  # the checked images
    # {canonical block or stage name: its name in the deploy file's layout}; empty for Apple's
    names: Dict[str, str] = field(default_factory=dict)

    def label(self, name: str) -> str:
        """A block or stage as the deploy file names it, the canonical name beside it
        (``stages.1.5 (stage2.5)``)."""
        return in_layout(name, self.names)

    @property
    def decisive(self) -> Stage:
        return self.fp64 if self.fp64 is not None else self.fp32

    @property
    def passed(self) -> bool:
        return self.decisive.passed

    @property
    def first_bad(self) -> Optional[BlockError]:
        bad = self.decisive.bad_blocks
        return next((b for b in self.decisive.blocks if b.name in bad), None) if bad else None

    @property
    def first_divergent(self) -> Optional[BlockError]:
        """First block whose end-to-end fp32 error exceeds atol + rtol * scale."""
        return next((b for b in self.fp32.blocks
                     if not (b.finite and b.max_abs <= self.atol + self.rtol * b.scale)), None)

    @property
    def rounding_explained(self) -> bool:
        """fp32 could not pass D, the float64 referee did: rounding, not fusion."""
        return self.fp64 is not None and self.fp64.passed

    @property
    def sensitivity_used(self) -> bool:
        """The bound needed the sensitivity term: D is beyond atol + rtol * scale somewhere."""
        stage, bound = self.decisive, lambda scale: self.atol + self.rtol * scale
        return self.adaptive and not (stage.output.within(self.rtol, self.atol) and all(
            b.finite and b.own_abs <= bound(b.scale) for b in stage.blocks))

    @property
    def dtype_limited(self) -> bool:
        """D passed only with the sensitivity term: it is as close as its dtype allows, no
        closer (honest float16/bfloat16 rounding, or an fp32 network that amplifies rounding)."""
        return self.passed and self.sensitivity_used

    def top1_text(self) -> str:
        """'; top-1 agrees with the train model on N of M checked images' (logits only)."""
        top1 = self.decisive.output.top1
        if top1 is None or not self.images:
            return ""
        return (f"; top-1 agrees with the train model on {round(top1 * self.images)} of "
                f"{self.images} checked image{'s' if self.images != 1 else ''}")

    @property
    def amplification(self) -> Optional[float]:
        """Output sensitivity per unit roundoff of relative weight change (the network's
        conditioning for this check); None when not measured."""
        s = self.decisive.sensitivity
        if s is None or not s.finite or s.scale == 0:
            return None if s is None else math.inf
        return (s.max_abs / s.scale) / self.unit


    def summary(self) -> str:
        """One line: the verdict and the numbers behind it (convert and verify print this)."""
        stage = self.decisive
        out = stage.output
        rel_bound = stage.output_bound / out.scale if out.scale > 0 else 0.0
        tol = f"rtol {self.rtol:g}" + (f", atol {self.atol:g}" if self.atol else "")
        if self.sensitivity_used:
            tol = (f"bound {rel_bound:.2e} ({tol} + {SENSITIVITY_FACTOR:g}x the rounding "
                   f"sensitivity of {self.deploy_dtype} weights)")
        if self.passed and self.fp64 is not None and not self.fp32.passed:
            divergent = self.first_divergent
            part = (f", parting from {self.label(divergent.name)} on" if divergent is not None
                    else "")
            amp = self.amplification
            amp_text = f"; rounding is amplified x{amp:.2g} here" if amp else ""
            return (f"equivalent up to fp32 rounding: in fp32 the {self.compared} differ by "
                    f"{self.fp32.output.max_rel:.2e}{part}, in float64 by {out.max_rel:.2e}, "
                    f"within {tol}{amp_text}")
        if self.dtype_limited:
            return (f"as close as {self.deploy_dtype} allows: max rel diff of the {self.compared} "
                    f"{out.max_rel:.2e} is within {tol}{self.top1_text()}")
        if self.passed:
            return f"equivalent: max rel diff of the {self.compared} {out.max_rel:.2e} is " \
                   f"within {tol}"
        where = ""
        bad = self.first_bad
        if bad is not None:
            sens = stage.block_sensitivity.get(bad.name)
            bound = _bound(self.rtol, self.atol, bad.scale,
                           sens.own_abs if sens is not None and sens.finite else 0.0,
                           self.adaptive)
            where = (f"; first block that breaks: {self.label(bad.name)} (its own rel diff "
                     f"{bad.own_rel:.2e}, bound {bound / bad.scale if bad.scale else 0:.2e})")
        elif self.first_divergent is not None:
            where = (f"; no block is wrong on its own, the difference builds up from "
                     f"{self.label(self.first_divergent.name)} on")
        precision = "" if stage.precision == "fp32" else " (float64 referee)"
        return (f"NOT equivalent{precision}: max rel diff of the {self.compared} "
                f"{out.max_rel:.2e} ({tol}){where}")


def non_finite(verdict: "Verdict", where: str, *, fused_here: bool) -> None:
    """BadInput when the fp32 check produced NaN/Inf that says the input is unusable: the train
    model's own output, or (``fused_here``: the deploy model is the tool's fusion of it) the
    deploy model's, whose fused weights overflow fp32 arithmetic."""
    out = verdict.fp32.output
    if not math.isfinite(out.scale):
        raise BadInput(f"{where}: the train model itself outputs NaN/Inf in float32 on the check "
                       f"images (weights too large?); nothing was written",
                       hint="a diverged training run or a corrupt file?")
    if fused_here and not out.finite:
        raise BadInput(f"{where}: the fused model outputs NaN/Inf in float32 on the check images "
                       f"(a BatchNorm with huge weight or near-zero variance makes fused weights "
                       f"that overflow); nothing was written",
                       hint="`mobileone inspect` shows the fault; check the file or --bn-eps")


def _bound(rtol: float, atol: float, scale: float, sens_abs: float, adaptive: bool) -> float:
    return atol + rtol * scale + (SENSITIVITY_FACTOR * sens_abs if adaptive else 0.0)


def _stage(precision: str, train, deploy, x: torch.Tensor, *, dtype: torch.dtype, device: str,
           chunk: int, logits: bool, rtol: float, atol: float, unit: Optional[float]) -> Stage:
    """D against T on ``x`` in ``dtype``, ``chunk`` images at a time, and (``unit``: the
    adaptive tolerance) D's sensitivity, the perturbed D against D on the same images."""
    errors: Dict[str, Dict[str, BlockError]] = {"deploy": {}, "perturbed": {}}
    refs, outs, pouts = [], [], []
    # cast/perturbed blocks serve every chunk
    keep: Optional[Dict[Any, Any]] = {} if x.shape[0] > chunk else None
    with strict_fp32(device):
        for i in range(0, x.shape[0], chunk):
            xi = x[i:i + chunk].to(device=device, dtype=dtype)
            ref, out, pout = lockstep(train, deploy, xi, errors, unit=unit, keep=keep)
            refs.append(ref.cpu())
            outs.append(out.cpu())
            if pout is not None:
                pouts.append(pout.cpu())
    ref, out = torch.cat(refs), torch.cat(outs)
    stage = Stage(precision=precision, output=compare_outputs(ref, out, logits),
                  blocks=list(errors["deploy"].values()), train_output=ref)
    sens_out = 0.0
    if pouts:
        stage.sensitivity = compare_outputs(out, torch.cat(pouts), logits)
        stage.block_sensitivity = errors["perturbed"]
        sens_out = stage.sensitivity.max_abs if stage.sensitivity.finite else 0.0
    adaptive = unit is not None
    stage.output_bound = _bound(rtol, atol, stage.output.scale, sens_out, adaptive)
    for b in stage.blocks:
        s = stage.block_sensitivity.get(b.name)
        sens = s.own_abs if s is not None and s.finite else 0.0
        stage.block_bounds[b.name] = _bound(rtol, atol, b.scale, sens, adaptive)
        if not (b.finite and b.own_abs <= stage.block_bounds[b.name]):
            stage.bad_blocks.append(b.name)
    return stage


def _alone(train, deploy, x: torch.Tensor, fp32: Stage, *, device: str, chunk: int,
           rtol: float, atol: float, unit: Optional[float]) -> Optional[Stage]:
    """The float64 referee of a failing fp32 check, judging fp32's bad blocks alone, in forward
    order, each on the train model's (fp32) input of it: a wrong block stays beyond its bound in
    float64, rounding amplified upstream does not.  With one chunk of images it ends at the
    first block it confirms; fp32's bad blocks after it keep fp32's verdict, and every other
    number (blocks, output) is fp32's.  None when no block stays beyond its bound (the whole
    float64 pass must decide)."""
    errors: Dict[str, Dict[str, BlockError]] = {"deploy": {}, "perturbed": {}}
    adaptive = unit is not None

    def bound(name: str) -> float:
        s = errors["perturbed"].get(name)
        return _bound(rtol, atol, errors["deploy"][name].scale,
                      s.own_abs if s is not None and s.finite else 0.0, adaptive)

    def beyond(name: str) -> bool:
        b = errors["deploy"][name]
        return not (b.finite and b.own_abs <= bound(name))

    one_chunk = x.shape[0] <= chunk
    keep: Optional[Dict[Any, Any]] = None if one_chunk else {}
    with strict_fp32(device):
        for i in range(0, x.shape[0], chunk):
            own_errors(train, deploy, x[i:i + chunk].to(device=device, dtype=torch.float32),
                       fp32.bad_blocks, torch.float64, errors, unit=unit, keep=keep,
                       stop=beyond if one_chunk else None)
    judged = list(errors["deploy"])
    confirmed = [n for n in judged if beyond(n)]
    if not confirmed:
        return None
    stage = dataclasses.replace(fp32, precision="fp64", blocks=[], train_output=None,
                                bad_blocks=confirmed + [n for n in fp32.bad_blocks
                                                        if n not in judged],
                                block_bounds=dict(fp32.block_bounds),
                                block_sensitivity=dict(fp32.block_sensitivity), alone=judged)
    for b in fp32.blocks:
        if b.name in judged:  # fp32's end-to-end numbers, the referee's own error
            own = errors["deploy"][b.name]
            b = dataclasses.replace(b, own_abs=own.own_abs, finite=b.finite and own.finite)
            stage.block_bounds[b.name] = bound(b.name)
            if b.name in errors["perturbed"]:
                stage.block_sensitivity[b.name] = errors["perturbed"][b.name]
        stage.blocks.append(b)
    return stage


@torch.no_grad()
def judge(train_sd: Mapping[str, torch.Tensor], deploy_sd: Mapping[str, torch.Tensor],
          arch: ArchSpec, x: torch.Tensor, *, train_layout: str = "apple",
          deploy_layout: Optional[str] = None, bn_eps: Optional[float] = None,
          rtol: Optional[float] = None, atol: float = DEFAULT_ATOL, device: str = "cpu",
          chunk: int = CHUNK, referee: bool = False) -> Verdict:
    """The verdict on ``deploy_sd`` against ``train_sd`` on images ``x`` (see module docstring).

    ``referee`` runs the float64 stage even when fp32 decides (``verify --reference fp64``).
    """
    if rtol is not None and not (math.isfinite(rtol) and rtol >= 0):
        raise BadInput(f"--rtol {rtol:g}: must be finite and >= 0")
    if not (math.isfinite(atol) and atol >= 0):
        raise BadInput(f"--atol {atol:g}: must be finite and >= 0")
    adaptive = rtol is None
    rtol = DEFAULT_RTOL if rtol is None else rtol
    deploy_layout = deploy_layout or train_layout
    d_dtype = float_dtype(deploy_sd)
    unit = UNIT_ROUNDOFF[str(d_dtype).replace("torch.", "")]
    logits = arch.has_head
    chunk = per_pass(x.shape[2:], chunk)
    # The models hold the files' tensors as they are (no copy); each stage runs every block in
    # its own precision, one block at a time.  .eval(): running statistics are what fusion
    # folds (Apple issue 8).
    train = load_model(train_sd, arch, "train", layout=train_layout, bn_eps=bn_eps,
                       device=device).eval()
    deploy = load_model(deploy_sd, arch, "deploy", layout=deploy_layout, device=device).eval()

    def run(precision: str, dtype: torch.dtype) -> Stage:
        return _stage(precision, train, deploy, x, dtype=dtype, device=device, chunk=chunk,
                      logits=logits, rtol=rtol, atol=atol, unit=unit if adaptive else None)

    with step(None, "fp32 pass"):
        fp32 = run("fp32", torch.float32)
    verdict = Verdict(rtol=rtol, atol=atol, adaptive=adaptive,
                      deploy_dtype=str(d_dtype).replace("torch.", ""), unit=unit,
                      compared="logits" if logits else "feature map", fp32=fp32,
                      images=int(x.shape[0]))
    if deploy_layout != "apple":
        verdict.names = {**stage_names(arch, deploy_layout), **block_names(arch, deploy_layout)}
    # The referee explains rounding; NaN/Inf in fp32 is never rounding (the model is unusable
    # in fp32, whatever float64 says), so it decides only finite comparisons.
    if referee or (not fp32.passed and fp32.output.finite and fp32.output.scale > 0):
        # A failing check's referee judges fp32's bad blocks alone first (what makes a failing
        # check cost about what a passing one does); --reference fp64 runs it whole.
        with step(None, "float64 referee"):
            if not referee and fp32.bad_blocks:
                verdict.fp64 = _alone(train, deploy, x, fp32, device=device, chunk=chunk,
                                      rtol=rtol, atol=atol, unit=unit if adaptive else None)
            if verdict.fp64 is None:
                verdict.fp64 = run("fp64", torch.float64)
        ref64, ref32 = verdict.fp64.train_output, fp32.train_output
        if ref64 is not None and ref32 is not None:  # a referee of blocks alone has no output
            verdict.train_fp32_vs_fp64 = compare_outputs(ref64, ref32, logits)
    for stage in (verdict.fp32, verdict.fp64):
        if stage is not None:
            stage.train_output = None  # the verdict keeps numbers, not activations
    return verdict
