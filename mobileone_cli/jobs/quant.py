"""``mobileone quant``: what int8 post-training quantization does to a MobileOne, block by block.

The checkpoint is opened with :func:`~mobileone_cli.io.source.open_source` (any layout,
``--config``, ``--prefix``, ``--ema``) and a train-form file is fused in memory exactly as
``convert`` fuses it.  The deploy model is calibrated and measured under int8 fake quantization
(:mod:`.quant.measure`: per block, the weight range spread and the SQNR of the block alone and
of the int8 network up to it; end to end, the output's SQNR, top-1/top-5 agreement with fp32,
and accuracy when the calibration images are labelled).  Images are read with ``eval``'s
pipeline (:mod:`.data`), or are seeded random images.  ``compare_train`` measures the unfused
model the same way; ``export`` writes a real int8 ExecuTorch program (:mod:`.quant.pt2e`),
executes it in the ExecuTorch runtime on the same images and reports what it measured.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..errors import BadInput
from ..io.source import LoadOptions
from ..rules.limits import MAX_IMAGES, check_batch, check_seed
from ..timing import Steps

__all__ = ["QuantOptions", "Calibration", "ExportCheck", "QuantReport", "quantize_file",
           "DEFAULT_SYNTHETIC"]

DEFAULT_SYNTHETIC = 32  # seeded random images when neither --calib nor --calib-synthetic


@dataclass
class QuantOptions(LoadOptions):
    """How ``quant`` reads, calibrates, measures and exports (reading options: LoadOptions)."""

    calib: Optional[str] = None  # a folder of images (eval's layouts)
    synthetic: Optional[int] = None  # N seeded random images
    scheme: str = "per-channel"  # of the weights
    export: Optional[str] = None  # OUT.pte
    force: bool = False
    compare_train: bool = False
    equalize: bool = False  # also measure (and export) after data-free quantization
    input_size: Tuple[int, int] = (224, 224)  # synthetic images; the crop of DIR's images
    preprocessing: Any = None  # data.pipeline.Preprocessing for DIR (default: eval's)
    limit: Optional[int] = None  # at most this many of DIR's images, spread over it
    batch: int = 8
    workers: Optional[int] = None
    seed: int = 0


@dataclass
class Calibration:
    """The images everything was calibrated and measured on."""

    kind: str  # 'images' or 'synthetic'
    images: int  # used
    shape: List[int]  # (C, H, W) of one image
    root: Optional[str] = None
    listed: int = 0  # images in DIR
    unreadable: int = 0
    labelled: bool = False
    preprocessing: Optional[str] = None
    seed: Optional[int] = None


@dataclass
class ExportCheck:
    """The int8 .pte executed in the ExecuTorch runtime against the fp32 deploy model."""

    path: str
    size: int
    scheme: str
    images: int
    output_db: Optional[float]
    top1_agreement: Optional[float]
    top5_agreement: Optional[float]
    max_abs_diff: float
    scale: float
    outside_delegate: List[str] = field(default_factory=list)
    seconds: float = 0.0
    equalized: bool = False  # the program of the equalized, bias-corrected model


@dataclass
class QuantReport:
    """Everything ``mobileone quant`` measured."""

    source: Dict[str, Any]  # jobs.verify.Side.describe()
    arch: Any  # ArchSpec
    scheme: str
    calibration: Calibration
    deploy: Any  # quant.measure.FormResult
    train: Any = None  # FormResult with --compare-train
    export: Optional[ExportCheck] = None
    equalized: Any = None  # jobs.quant_equalize.EqualizedQuant with --equalize
    fused_here: bool = False
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step (-v)


def _validate(o: QuantOptions, ckpt: str) -> None:
    from ..quant.fakequant import SCHEMES

    if o.scheme not in SCHEMES:
        raise BadInput(f"--scheme {o.scheme!r}: choose one of {', '.join(SCHEMES)}")
    if o.calib is not None and o.synthetic is not None:
        raise BadInput("give --calib DIR or --calib-synthetic N, not both")
    if o.synthetic is not None and not 1 <= o.synthetic <= MAX_IMAGES:
        raise BadInput(f"--calib-synthetic {o.synthetic}: must be between 1 and {MAX_IMAGES}")
    if o.limit is not None and o.limit < 1:
        raise BadInput(f"--limit {o.limit}: must be at least 1")
    if o.calib is not None and not os.path.isdir(o.calib):
        raise BadInput(f"--calib {o.calib}: not a directory (a folder of images, or of class "
                       f"folders as eval reads them)")
    check_batch(o.batch, (o.input_size[0], o.input_size[1]))
    check_seed(o.seed)
    check_seed(o.seed + (o.synthetic or DEFAULT_SYNTHETIC))
    if o.export is not None:
        from ..io.write import check_destination
        from ..quant.pt2e import require

        if not os.fspath(o.export).lower().endswith(".pte"):
            raise BadInput(f"--export {o.export}: the int8 program is an ExecuTorch file; name "
                           f"it .pte")
        check_destination(o.export, force=o.force, src=ckpt, what="path ending in .pte")
        require()


class _Images:
    """The calibration images, as a source of fresh batch iterators (every pass re-reads)."""

    def __init__(self, o: QuantOptions, arch, calib: Calibration, dataset=None, p=None):
        self.o, self.arch, self.calib, self.dataset, self.p = o, arch, calib, dataset, p
        self._counted = False

    def __call__(self) -> Iterator[Tuple[Any, Any, List[str]]]:
        import torch

        if self.dataset is None:
            n, seed = self.calib.images, self.o.seed
            for i in range(0, n, self.o.batch):
                ids = range(i, min(n, i + self.o.batch))
                x = torch.cat([_synthetic(seed + j, self.calib.shape) for j in ids])
                yield x, torch.full((len(ids),), -1, dtype=torch.int64), \
                    [f"synthetic-{j}" for j in ids]
            return
        from ..data.stream import stream_batches

        def unreadable(item, reason: str) -> None:
            if not self._counted:
                self.calib.unreadable += 1

        count = 0
        for b in stream_batches(self.dataset.items(self.o.limit), self.p, self.o.batch,
                                workers=self.o.workers, unreadable=unreadable,
                                root=self.dataset.root):
            count += len(b.names)
            yield b.x, b.labels, b.names
        if not self._counted:
            self.calib.images = count
            self._counted = True

    def singles(self) -> Iterator[Tuple[Any, Any, List[str]]]:
        for x, labels, names in self():
            for i in range(x.shape[0]):
                yield x[i:i + 1], labels[i:i + 1], names[i:i + 1]


def _synthetic(seed: int, shape: List[int]):
    from ..check.harness import seeded_inputs

    return seeded_inputs(seed, 1, (shape[1], shape[2]), channels=shape[0])


def _images(o: QuantOptions, arch, notes: List[str]) -> _Images:
    h, w = o.input_size
    if o.calib is None:
        n = o.synthetic or DEFAULT_SYNTHETIC
        if o.synthetic is None:
            notes.append(f"no --calib DIR: calibrated on {n} seeded random images; real images "
                         f"give the ranges a deployed model sees")
        return _Images(o, arch, Calibration(kind="synthetic", images=n,
                                            shape=[arch.in_channels, h, w], seed=o.seed))
    from ..data.folders import open_dataset
    from ..data.pipeline import Preprocessing, make_preprocessing, pillow

    pillow()
    if arch.in_channels != 3:
        raise BadInput(f"this MobileOne takes {arch.in_channels}-channel input; images are RGB",
                       hint="use --calib-synthetic N")
    p = o.preprocessing or (Preprocessing() if (h, w) == (224, 224)
                            else make_preprocessing(crop=f"{h}x{w}"))
    ds = open_dataset(o.calib, num_classes=arch.num_classes or None, need_labels=False)
    notes.extend(ds.notes)
    calib = Calibration(kind="images", images=ds.selected(o.limit), shape=[3, *p.crop],
                        root=ds.root, listed=ds.total,
                        labelled=ds.labelled and arch.has_head, preprocessing=p.describe())
    return _Images(o, arch, calib, ds, p)


def quantize_file(ckpt: str, options: Optional[QuantOptions] = None,
                  **overrides: Any) -> QuantReport:
    """``mobileone quant CKPT``: measure int8 PTQ of CKPT's deploy form (see the module doc)."""
    o = dataclasses.replace(options or QuantOptions(), **overrides)
    ckpt = os.fspath(ckpt)
    _validate(o, ckpt)
    start = time.perf_counter()
    import torch

    from ..check.harness import check_room, load_model, per_pass
    from ..fuse.fusion import fuse_state_dict
    from ..quant.measure import measure
    from .verify import read_side

    steps = Steps()
    side = read_side(ckpt, o, steps=steps)
    arch = side.arch
    notes = list(side.notes)
    if o.compare_train and side.form != "train":
        raise BadInput(f"--compare-train: {ckpt} is a deploy-form checkpoint; the unfused model "
                       f"is needed to compare", hint="give the train (unfused) checkpoint")
    with steps("images"):
        images = _images(o, arch, notes)
    chunk = per_pass(images.calib.shape[1:])
    check_room(arch, images.calib.shape[1:], min(o.batch, chunk), "the int8 measurement")
    deploy_sd = side.state_dict
    if side.form == "train":
        with steps("fuse"):
            deploy_sd = fuse_state_dict(dict(side.state_dict), arch, eps=side.eps,
                                        layout=side.layout)
    deploy = load_model(deploy_sd, arch, "deploy", layout=side.layout, bn_eps=side.eps,
                        dtype=torch.float32)
    kw: Dict[str, Any] = dict(scheme=o.scheme, per_pass=chunk, logits=arch.has_head,
                              num_classes=arch.num_classes)
    with steps("int8 deploy passes"):
        measured = measure(deploy, images, form="deploy", **kw)
    report = QuantReport(source=side.describe(), arch=arch, scheme=o.scheme,
                         calibration=images.calib, fused_here=side.form == "train",
                         deploy=measured, notes=notes)
    if images.calib.images == 0:
        raise BadInput(f"--calib {o.calib}: none of its images could be read")
    if o.compare_train:
        train = load_model(side.state_dict, arch, "train", layout=side.layout, bn_eps=side.eps,
                           dtype=torch.float32)
        with steps("int8 train passes"):
            report.train = measure(train, images, form="train", **kw)
        del train
    program = None
    if o.equalize:
        from ..quant.dfq import bias_corrected_copy
        from .quant_equalize import measure_equalized

        with steps("int8 equalized passes"):
            report.equalized, eq = measure_equalized(side, images, report.deploy, kw, deploy)
        report.notes += report.equalized.notes
        if o.export is not None:
            program = bias_corrected_copy(eq.model, eq.expected, o.scheme)
        del eq
    if o.export is not None:
        report.export = _export(deploy, images, o, steps, program)
    for form in (report.deploy, report.train):
        if form is not None and form.unmeasurable:
            report.notes.append(f"{form.form} form: activation ranges not finite at "
                                f"{form.unmeasurable[0]} (fp32 overflow): SQNR not measurable "
                                f"there")
    report.seconds = time.perf_counter() - start
    report.timings = steps.seconds
    return report


def _export(deploy, images: _Images, o: QuantOptions, steps: Steps,
            program=None) -> ExportCheck:
    """PT2E int8 program of ``program`` (default: ``deploy``; with --equalize the equalized,
    bias-corrected model) -> ``o.export`` (atomically), executed in the ExecuTorch runtime on
    every calibration image against the fp32 deploy model; the numbers are the file's."""
    import torch

    from ..check.harness import compare_outputs
    from ..check.tally import Agreement
    from ..io.write import atomic_write
    from ..models.mobileone import MeanPoolHead
    from ..quant.fakequant import Noise
    from ..quant.pt2e import quantize_program, write_program
    from ..runtimes import load_artifact

    export = o.export
    assert export is not None  # called for --export only
    t0 = time.perf_counter()
    net = MeanPoolHead(deploy if program is None else program).eval()
    sample = torch.zeros(1, *images.calib.shape)
    with steps("int8 PT2E quantization"):
        converted = quantize_program(net, sample, (x for x, _, _ in images.singles()),
                                     per_channel=o.scheme == "per-channel")
    logits = deploy.arch.has_head
    result = ExportCheck(path=export, size=0, scheme=o.scheme, images=0, output_db=None,
                         top1_agreement=None, top5_agreement=None, max_abs_diff=0.0, scale=0.0,
                         equalized=o.equalize)

    def write(tmp: str) -> None:
        with steps("int8 .pte lowering"):
            result.outside_delegate = write_program(converted, sample, tmp)["outside_delegate"]

    def check(tmp: str) -> None:
        with steps("ExecuTorch int8 check"):
            run_check(tmp)

    def run_check(tmp: str) -> None:
        art = load_artifact(tmp, kind="executorch")
        noise, agreement, top5 = Noise(), Agreement(logits=logits), 0
        with torch.inference_mode():
            for x, labels, names in images.singles():
                ref = deploy(x)
                out = art.run(x).to(torch.float32).reshape(ref.shape)
                noise.update(ref, out)
                agreement.update(ref, out, names, labels)
                if logits:
                    top5 += round(compare_outputs(ref, out).top5 or 0.0)
        result.images = agreement.images
        result.output_db = noise.db
        result.max_abs_diff, result.scale = agreement.max_abs, agreement.scale
        if logits and agreement.images:
            result.top1_agreement = agreement.agreement
            result.top5_agreement = top5 / agreement.images

    result.size = atomic_write(export, write, force=o.force, check=check)
    result.seconds = time.perf_counter() - t0
    return result
