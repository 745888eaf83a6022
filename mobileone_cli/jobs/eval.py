"""``mobileone eval``: accuracy on labelled images, train vs deploy vs exported files, one pass.

The checkpoint is opened with :func:`~mobileone_cli.io.source.open_source` (any layout,
``--config``, ``--prefix``, ``--ema``); a train-form file is also fused in memory (exactly what
``convert`` writes) unless a deploy checkpoint is given.  Exported files (``.onnx``, and whatever
:func:`~mobileone_cli.runtimes.load_artifact` opens) run in their runtime.  Every model sees the
same preprocessed batch (:mod:`mobileone_cli.data`); the first model is the reference the others
are compared with: top-1 agreement, largest output difference, and the images where the top-1
differs.  Totals are folded per batch (:mod:`.check.tally`): memory does not grow with the
number of images.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..arch.specs import ArchSpec
from ..check.harness import load_model, resolve_device, strict_fp32
from ..check.tally import Accuracy, Agreement
from ..data.folders import Dataset, open_dataset
from ..data.pipeline import Preprocessing, pillow
from ..data.stream import default_workers, stream_batches
from ..errors import BadInput
from ..io.source import LoadOptions
from ..rules.limits import MAX_LISTED, MAX_WORKERS, check_batch
from ..runtimes import Artifact, load_artifact, runtime_for
from ..timing import Steps, step
from .verify import Side, pair_sides, read_side

__all__ = ["Model", "ModelResult", "EvalReport", "evaluate_files", "artifact_model"]

Progress = Callable[[int, int], None]  # (images done, images selected)


@dataclass
class Model:
    """One model of an evaluation and how to run it on a batch."""

    role: str  # 'train', 'deploy' or 'exported'
    name: str  # file name, or 'fused in memory'
    info: Dict[str, Any]  # what it is, for the report
    run: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)


@dataclass
class ModelResult:
    role: str
    name: str
    info: Dict[str, Any]
    accuracy: Optional[Accuracy] = None  # None: no labels or no head
    agreement: Optional[Agreement] = None  # None: the reference itself


@dataclass
class EvalReport:
    """Everything ``mobileone eval`` measured."""

    arch: ArchSpec
    dataset: Dataset
    preprocessing: Preprocessing
    models: List[ModelResult]
    limit: Optional[int]
    batch: int
    workers: int
    device: str
    images: int = 0  # evaluated
    unreadable: int = 0
    unreadable_listed: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # the pass, from the first image to the last
    forward_seconds: float = 0.0  # of which in the models
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step (-v)
    notes: List[str] = field(default_factory=list)

    @property
    def logits(self) -> bool:
        return self.arch.has_head

    @property
    def images_per_second(self) -> Optional[float]:
        return self.images / self.seconds if self.seconds > 0 else None

    @property
    def selected(self) -> int:
        return self.dataset.selected(self.limit)


def _torch_model(side: Side, form: str, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    # fp32 whatever the file's dtype: a half-precision file is evaluated with its rounded weights
    model = load_model(side.state_dict, side.arch, form, layout=side.layout, bn_eps=side.eps,
                       device=device, dtype=torch.float32)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.to(device)).to(device="cpu", dtype=torch.float32)

    return run


def _static(dim: Any) -> Optional[int]:
    return dim if isinstance(dim, int) and dim > 0 else None


def artifact_model(path: str, arch: ArchSpec, p: Preprocessing) -> Model:
    """An exported file opened in its runtime, run in chunks of its fixed batch if it has one."""
    art: Artifact = load_artifact(path)
    if not art.executes:
        raise BadInput(f"{path}: eval cannot score it here: {art.runtime} runs only on macOS",
                       hint=f"`mobileone verify CKPT {path}` reads its weights back here; "
                            f"eval it on a Mac")
    shape = list(art.input_shape) + [None] * (4 - len(art.input_shape))
    b, c, h, w = (_static(d) for d in shape[:4])
    if c is not None and c != 3:
        raise BadInput(f"{path}: takes {c}-channel input; images are RGB")
    if (h is not None and h != p.crop[0]) or (w is not None and w != p.crop[1]):
        raise BadInput(f"{path}: takes {h or '?'}x{w or '?'} images, but the preprocessing "
                       f"crops {p.crop[0]}x{p.crop[1]}", hint=f"add --crop {h or p.crop[0]}x"
                                                              f"{w or p.crop[1]}")
    out_c = _static(art.output_shape[1]) if len(art.output_shape) > 1 else None
    if arch.has_head and out_c is not None and out_c != arch.num_classes:
        raise BadInput(f"{path}: outputs {out_c} values per image, but the checkpoint has "
                       f"{arch.num_classes} classes")

    def run(x: torch.Tensor) -> torch.Tensor:
        if b is None or x.shape[0] == b:
            return art.run(x).to(torch.float32)
        outs = []
        for i in range(0, x.shape[0], b):  # a fixed-batch graph: full chunks, the last padded
            chunk = x[i:i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - n, *chunk.shape[1:]))])
            outs.append(art.run(chunk).to(torch.float32)[:n])
        return torch.cat(outs)

    info = {"path": path, "runtime": art.runtime, "input_shape": art.input_shape,
            "input_dtype": art.input_dtype, **{k: v for k, v in art.details.items()
                                               if isinstance(v, (int, float, str))}}
    return Model(role="exported", name=os.path.basename(path), info=info, run=run)


def _models(ckpt: str, deploy: Sequence[str], options: LoadOptions, p: Preprocessing,
            device: str, steps: Optional[Steps] = None
            ) -> Tuple[ArchSpec, List[Model], List[str]]:
    from ..fuse.fusion import fuse_state_dict

    train = read_side(ckpt, options, steps=steps)
    arch = train.arch
    if arch.in_channels != 3:
        raise BadInput(f"{ckpt}: this MobileOne takes {arch.in_channels}-channel input; "
                       f"images are RGB")
    notes = list(train.notes)
    files = [d for d in deploy if runtime_for(d) is None]
    exported = [d for d in deploy if runtime_for(d) is not None]
    sides = []
    for path in files:
        side = read_side(path, LoadOptions(arch=options.arch, arch_source=options.arch_source,
                                           eps=options.eps, ema=options.ema,
                                           trust=options.trust), deploy=True, steps=steps)
        if train.form == "deploy" and side.form == "train":
            raise BadInput(f"the files are swapped: {ckpt} is deploy-form and {path} is "
                           f"train-form", hint=f"mobileone eval {path} DATA --deploy {ckpt}")
        pair_sides(train, side)
        sides.append(side)
        notes.extend(side.notes)
    if train.form == "train" and not sides:
        with step(steps, "fuse"):
            fused = fuse_state_dict(dict(train.state_dict), arch, eps=train.eps,
                                    layout=train.layout)
        sides.append(Side(path=None, layout=train.layout, form="deploy", arch=arch,
                          dtype=train.dtype, state_dict=fused,
                          source=f"fused in memory (eps {train.eps:g})", eps=train.eps))
    models = [Model(role=train.form, name=os.path.basename(ckpt), info=train.describe(),
                    run=_torch_model(train, train.form, device))]
    for side in sides:
        models.append(Model(role="deploy", name=os.path.basename(side.path) if side.path
                            else "fused in memory", info=side.describe(),
                            run=_torch_model(side, "deploy", device)))
        side.state_dict = {}  # the model holds the tensors now
    with step(steps, "runtimes"):
        models += [artifact_model(path, arch, p) for path in exported]
    return arch, models, notes


def evaluate_files(ckpt: str, data: str, *, deploy: Sequence[str] = (),
                   labels: Optional[str] = None, classes: Optional[str] = None,
                   options: Optional[LoadOptions] = None,
                   preprocessing: Optional[Preprocessing] = None, limit: Optional[int] = None,
                   batch: int = 32, workers: Optional[int] = None, device: str = "cpu",
                   progress: Optional[Progress] = None) -> EvalReport:
    """``mobileone eval CKPT DATA``: one pass over DATA's images through every model.

    ``deploy``: deploy checkpoints and/or exported files (by extension); ``labels``/``classes``:
    see :func:`~mobileone_cli.data.folders.open_dataset`; ``limit``: that many images spread
    over DATA; ``progress(done, selected)`` is called after every batch."""
    p = preprocessing or Preprocessing()
    check_batch(batch, p.crop)
    if limit is not None and limit < 1:
        raise BadInput(f"--limit {limit}: must be at least 1")
    device = resolve_device(device)
    workers = default_workers() if workers is None else workers
    if not 0 <= workers <= MAX_WORKERS:
        raise BadInput(f"--workers {workers}: must be between 0 and {MAX_WORKERS}")
    pillow()  # say what to install before loading anything
    steps = Steps()
    arch, models, notes = _models(ckpt, deploy, options or LoadOptions(), p, device, steps)
    dataset = open_dataset(data, labels=labels, classes=classes,
                           num_classes=arch.num_classes or None, need_labels=arch.has_head)
    scored = arch.has_head and dataset.labelled
    results = [ModelResult(role=m.role, name=m.name, info=m.info,
                           accuracy=Accuracy(arch.num_classes) if scored else None,
                           agreement=Agreement(logits=arch.has_head) if i else None)
               for i, m in enumerate(models)]
    report = EvalReport(arch=arch, dataset=dataset, preprocessing=p, models=results,
                        limit=limit, batch=batch, workers=workers, device=device,
                        notes=notes + dataset.notes)
    if not arch.has_head:
        report.notes.append("headless checkpoint: feature maps are compared, no accuracy")

    def unreadable(item, reason: str) -> None:
        report.unreadable += 1
        if len(report.unreadable_listed) < MAX_LISTED:
            report.unreadable_listed.append((item.name, reason))

    selected = dataset.selected(limit)
    if progress is not None:
        progress(0, selected)
    start = time.perf_counter()
    with strict_fp32(device):
        for b in stream_batches(dataset.items(limit), p, batch, workers=workers,
                                unreadable=unreadable, root=dataset.root):
            t0 = time.perf_counter()
            outs = [m.run(b.x) for m in models]
            report.forward_seconds += time.perf_counter() - t0
            _same_shapes(models, outs)
            tops: List[Optional[torch.Tensor]] = [None] * len(outs)
            for i, (res, out) in enumerate(zip(results, outs)):
                if res.accuracy is not None:
                    tops[i] = res.accuracy.update(out, b.labels)
                if res.agreement is not None:
                    res.agreement.update(outs[0], out, b.names, b.labels, tops[0], tops[i])
            report.images += len(b.names)
            if progress is not None:
                progress(report.images + report.unreadable, selected)
    report.seconds = time.perf_counter() - start
    report.timings = dict(steps.seconds, images=report.seconds)
    if progress is not None:
        progress(selected, selected)
    if report.images == 0:
        first = report.unreadable_listed[0][1] if report.unreadable_listed else "-"
        raise BadInput(f"{data}: none of the {selected} image(s) could be read (first: {first})")
    return report


def _same_shapes(models, outs) -> None:
    """An exported file whose output is not shaped like the checkpoint's (its graph computes
    another shape than it declares) is bad input, named."""
    ref = tuple(outs[0].shape)
    for m, out in zip(models[1:], outs[1:]):
        if tuple(out.shape) != ref:
            raise BadInput(f"{m.name}: its output has shape {list(out.shape)} where "
                           f"{models[0].name}'s has {list(ref)} (an exported file may declare "
                           f"one shape and compute another)")
