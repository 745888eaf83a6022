"""``mobileone verify``: a train checkpoint against a deploy checkpoint (or its own fusion).

Files are opened with :func:`~mobileone_cli.io.source.open_source`, paired (forms, architecture,
head), and judged by :func:`.verdict.judge`, the rule ``convert`` uses too.  The report adds the
per-stage table, the network's conditioning and the inputs used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ..arch.specs import ArchSpec
from ..check.harness import check_room, resolve_device, seeded_inputs
from ..check.localize import StageError, stage_table
from ..check.verdict import Verdict, judge, non_finite
from ..errors import BadInput
from ..io.source import LoadOptions, open_source, recorded_eps
from ..rules.limits import DEFAULT_EPS, check_batch, parse_input_size
from ..rules.tolerances import DEFAULT_ATOL
from ..timing import Steps

__all__ = ["Side", "read_side", "pair_sides", "VerifyReport", "ProfileRow", "verify_state_dicts",
           "verify_files"]


@dataclass
class Side:
    """One checkpoint of a comparison: the MobileOne's tensors and what detection found."""

    path: Optional[str]  # None: fused in memory
    layout: str
    form: str
    arch: ArchSpec
    prefix: str = ""
    dtype: str = "float32"
    state_dict: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    source: str = "file"  # 'file' or 'fused in memory'
    notes: List[str] = field(default_factory=list)  # how the file was read
    eps: float = DEFAULT_EPS
    eps_from: str = "default"  # '--bn-eps', a config, 'metadata' or 'default' (Source.eps_from)
    recorded_eps: Optional[float] = None  # the bn_eps in the file's own metadata

    def describe(self) -> Dict[str, object]:
        return {"path": self.path, "source": self.source, "layout": self.layout,
                "form": self.form, "arch": self.arch.name, "num_classes": self.arch.num_classes,
                "prefix": self.prefix, "dtype": self.dtype}


def read_side(path: str, options: Optional[LoadOptions] = None, *,
              deploy: bool = False, steps: Optional[Steps] = None) -> Side:
    """Open ``path`` and keep only its MobileOne's tensors (a deploy side may hold NaN/Inf: it
    then fails the comparison, it is not bad input)."""
    src = open_source(path, options, refuse_non_finite=not deploy, steps=steps)
    det = src.detection
    return Side(path=src.path, layout=det.layout, form=det.form, arch=det.arch,
                prefix=det.prefix, dtype=det.dtype, state_dict=src.mobileone(),
                notes=[f"{src.path}: {n}" for n in src.notes], eps=src.eps,
                eps_from=src.eps_from,
                recorded_eps=recorded_eps(src.checkpoint.metadata, src.path))


def pair_sides(train: Side, deploy: Side) -> None:
    """Refuse a pair that cannot be compared, saying what is wrong, before any number."""
    tp, dp = train.path or "TRAIN_CKPT", deploy.path or "DEPLOY_CKPT"
    if train.form == "deploy" and deploy.form == "train":
        raise BadInput(f"the files are swapped: {tp} is deploy-form and {dp} is train-form",
                       hint=f"mobileone verify {dp} {tp}")
    if train.form != "train":
        raise BadInput(f"{tp} is a deploy-form checkpoint; the first file must be the train "
                       f"(unfused) checkpoint")
    if deploy.form != "deploy":
        raise BadInput(f"{dp} is a train-form checkpoint; the second file must be the deploy "
                       f"(fused) checkpoint",
                       hint=f"to check the fusion of one train checkpoint: mobileone verify {tp}")
    if not train.arch.same_backbone(deploy.arch, ignore_branches=True):
        raise BadInput(f"architecture mismatch: {tp} is MobileOne {train.arch.name} but {dp} is "
                       f"MobileOne {deploy.arch.name}")
    if train.arch.num_classes != deploy.arch.num_classes:
        def classes(a: ArchSpec) -> str:
            return f"{a.num_classes} classes" if a.num_classes else "no head"
        raise BadInput(f"head mismatch: {tp} has {classes(train.arch)} but {dp} has "
                       f"{classes(deploy.arch)}")


@dataclass
class ProfileRow:
    """One bar of the error profile: a stage's block closest to its bound, or the output."""

    name: str  # 'stem', 'stage1', ..., 'head', or 'output' (as the deploy file names it)
    block: str  # that block, alike (or what the output is: 'logits', 'feature map')
    rel: float  # its own error, relative to max |train block output| (inf: NaN/Inf)
    bound_rel: Optional[float]  # its bound, relative alike (None: the train output is all 0)
    within: bool

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "block": self.block, "rel": self.rel,
                "bound_rel": self.bound_rel, "within": self.within}


@dataclass
class VerifyReport:
    """Everything ``mobileone verify`` found; ``passed`` is the verdict."""

    arch: ArchSpec
    verdict: Verdict
    train: Dict[str, object] = field(default_factory=dict)
    deploy: Dict[str, object] = field(default_factory=dict)
    inputs: Dict[str, object] = field(default_factory=dict)
    device: str = "cpu"
    notes: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def stages(self) -> List[StageError]:
        stage = self.verdict.decisive
        return stage_table(stage.blocks, stage.bad_blocks, self.verdict.names)

    def summary(self) -> str:
        return self.verdict.summary()

    def profile(self) -> List[ProfileRow]:
        """Per stage, the block nearest its bound (own error / bound), then the output: what
        the verdict rests on, one number and its bound per row."""
        stage = self.verdict.decisive
        rows: List[ProfileRow] = []
        for row, number in zip(self.stages, sorted({b.stage for b in stage.blocks})):
            blocks = [b for b in stage.blocks if b.stage == number]

            def ratio(b) -> float:
                bound = stage.block_bounds.get(b.name, 0.0)
                if not b.finite:
                    return float("inf")
                return b.own_abs / bound if bound > 0 else (0.0 if b.own_abs == 0 else 1e300)

            b = max(blocks, key=ratio)
            bound = stage.block_bounds.get(b.name)
            rows.append(ProfileRow(row.label or row.name, self.verdict.label(b.name), b.own_rel,
                                   bound / b.scale if bound is not None and b.scale > 0
                                   else None, b.name not in stage.bad_blocks))
        out = stage.output
        rows.append(ProfileRow("output", self.verdict.compared, out.max_rel,
                               stage.output_bound / out.scale if out.scale > 0 else None,
                               stage.output_within))
        return rows


def verify_state_dicts(train_sd: Dict[str, torch.Tensor], deploy_sd: Dict[str, torch.Tensor],
                       arch: ArchSpec, *, layout: str = "apple",
                       deploy_layout: Optional[str] = None, bn_eps: Optional[float] = None,
                       seed: int = 0, batch: int = 1, input_size: Any = (224, 224),
                       images: Optional[torch.Tensor] = None, device: str = "cpu",
                       rtol: Optional[float] = None, atol: float = DEFAULT_ATOL,
                       reference: Optional[str] = None) -> VerifyReport:
    """Judge a train and a deploy state dict of ``arch`` on seeded images (or ``images``)."""
    if reference not in (None, "fp64"):
        raise BadInput(f"--reference {reference!r}: only fp64 is supported")
    if images is None:
        size = parse_input_size(input_size)
        check_batch(batch, size, per_pass=False)
        check_room(arch, size, batch, "verify")
        x = seeded_inputs(seed, batch, size, arch.in_channels)
    else:
        x = images.to(torch.float32)
        if x.ndim != 4 or x.shape[1] != arch.in_channels:
            raise BadInput(f"the images have shape {list(x.shape)}, but this MobileOne takes "
                           f"{arch.in_channels}-channel input")
        check_room(arch, x.shape[2:], x.shape[0], "verify")
    verdict = judge(train_sd, deploy_sd, arch, x, train_layout=layout,
                    deploy_layout=deploy_layout, bn_eps=bn_eps, rtol=rtol, atol=atol,
                    device=device, referee=reference == "fp64")
    report = VerifyReport(arch=arch, verdict=verdict, device=str(device),
                          inputs={"kind": "images" if images is not None else "random",
                                  "seed": seed, "shape": list(x.shape)})
    alone = verdict.fp64.alone if verdict.fp64 is not None else []
    if alone:
        labels = [verdict.label(n) for n in alone]
        which = (f"{labels[0]} (beyond its bound in fp32) alone, on" if len(labels) == 1 else
                 f"the {len(labels)} blocks beyond their bound in fp32 ("
                 + ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "")
                 + ") alone, each on")
        report.notes.append(f"the float64 referee judged {which} the train model's input of "
                            f"it; the other blocks and the output are fp32 numbers "
                            f"(--reference fp64 runs it whole)")
    return report


def verify_files(train_path: str, deploy_path: Optional[str] = None, *,
                 options: Optional[LoadOptions] = None, seed: int = 0, batch: int = 1,
                 input_size: Any = (224, 224), images_dir: Optional[str] = None,
                 device: str = "cpu", rtol: Optional[float] = None,
                 atol: float = DEFAULT_ATOL, reference: Optional[str] = None) -> VerifyReport:
    """``mobileone verify``: a train file against a deploy file, or against its own fusion."""
    from ..fuse.fusion import fuse_state_dict

    options = options or LoadOptions()
    steps = Steps()
    size = parse_input_size(input_size)
    device = resolve_device(device)
    images = names = pipeline = None
    image_notes: list = []
    if images_dir is not None:
        from ..check.images import load_images, preprocessing_for

        pipeline = preprocessing_for(size)
        with steps("images"):
            images, names = load_images(images_dir, preprocessing=pipeline, notes=image_notes)
    train = read_side(train_path, options, steps=steps)
    if deploy_path is None:
        if train.form != "train":
            raise BadInput(f"{train_path} is already deploy-form: there is nothing to fuse",
                           hint=f"compare it with its train checkpoint: "
                                f"mobileone verify TRAIN_CKPT {train_path}")
        # Exactly what convert writes (float64 fusion rounded once to the source dtype), so the
        # two commands judge the same model.
        with steps("fuse"):
            fused = fuse_state_dict(dict(train.state_dict), train.arch, eps=train.eps,
                                    layout=train.layout)
        deploy = Side(path=None, layout=train.layout, form="deploy", arch=train.arch,
                      dtype=train.dtype, state_dict=fused,
                      source=f"fused in memory (eps {train.eps:g})")
    else:
        deploy_options = LoadOptions(arch=options.arch, arch_source=options.arch_source,
                                     eps=options.eps, ema=options.ema, trust=options.trust)
        deploy = read_side(deploy_path, deploy_options, deploy=True, steps=steps)
        pair_sides(train, deploy)
        _eps_from_deploy(train, deploy)
    with steps("check"):
        report = verify_state_dicts(
            train.state_dict, deploy.state_dict, train.arch, layout=train.layout,
            deploy_layout=deploy.layout, bn_eps=train.eps, seed=seed, batch=batch,
            input_size=size, images=images, device=device, rtol=rtol, atol=atol,
            reference=reference)
    report.timings = steps.seconds
    non_finite(report.verdict, train_path, fused_here=deploy_path is None)
    report.train = dict(train.describe(), bn_eps=train.eps, bn_eps_from=train.eps_from)
    report.deploy = deploy.describe()
    report.notes.extend(train.notes + deploy.notes + image_notes)
    if names is not None:
        assert images_dir is not None and pipeline is not None  # read together above
        report.inputs.update(kind="images", dir=os.fspath(images_dir), files=len(names),
                             preprocessing=pipeline.describe())
    if deploy_path is not None and not report.passed and _most_blocks_bad(report):
        report.notes.append("most blocks differ on their own: a wrong --bn-eps, or a deploy "
                            "file made from another checkpoint?")
    return report


def _eps_from_deploy(train: Side, deploy: Side) -> None:
    """The train model runs with the eps recorded in the deploy file's metadata (``convert``
    writes the eps it fused with) when nothing stronger (--bn-eps, a config, the train file's
    own metadata) set it."""
    if train.eps_from != "default" or deploy.recorded_eps in (None, train.eps):
        return
    train.eps, train.eps_from = deploy.recorded_eps, f"metadata of {deploy.path}"
    train.notes.append(f"BatchNorm eps {train.eps:g} for {train.path}, as recorded in "
                       f"{deploy.path}'s metadata (--bn-eps overrides it)")


def _most_blocks_bad(report: VerifyReport) -> bool:
    """The files disagree in most blocks, not in one: another checkpoint or another eps."""
    stage = report.verdict.decisive
    blocks = [b for b in stage.blocks if b.stage <= report.arch.num_stages]
    return len(stage.bad_blocks) >= 0.5 * max(1, len(blocks))
