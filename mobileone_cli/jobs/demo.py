"""``mobileone demo``: the whole job on a network that ships with the package, no download.

By default the network is a MobileOne trained on the UCI handwritten digits
(:mod:`..assets.digits`): its train-form checkpoint is copied into the demo folder, converted and
verified (:func:`.convert.convert_file`), exported to every runtime installed here
(:func:`.export.export_file`, each file checked in its runtime), and then every model is run on
the held-out images: held-out top-1 of the train model, the deploy file, each exported file and
int8 fake quantization (:func:`..quant.measure.measure`, each weight scheme), each with its top-1
agreement with the train model.  ``synthetic`` keeps the random-weight demo (any architecture,
convert and verify only).  The files stay in the folder; nothing in it is overwritten without
``force``.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

from ..assets import digits as assets
from ..errors import BadInput

__all__ = ["DEFAULT_FOLDER", "HeldoutResult", "DemoReport", "run_demo", "planned_files"]

DEFAULT_FOLDER = "mobileone-demo"
HELDOUT_FOLDER = "heldout"  # the held-out images as PNG class folders, for `mobileone eval`

Progress = Callable[[str], None]  # the step about to run
RUNS_IN = {"onnx": "onnxruntime", "executorch": "ExecuTorch", "litert": "LiteRT",
           "coreml": "Core ML"}  # short names of the runtimes, by runtime module


@dataclass
class HeldoutResult:
    """One model on the held-out images."""

    name: str  # 'train', 'deploy', '.onnx', 'int8 per-channel', ...
    runs_in: str  # PyTorch, onnxruntime, ...
    file: Optional[str]  # what was run, None for an in-memory model
    top1: Optional[float]  # held-out accuracy (None: no image was scored)
    agreement: Optional[float]  # top-1 agreement with the reference (None: the reference)
    disagreeing: int = 0  # images whose top-1 differs from the reference's
    max_rel: Optional[float] = None  # largest output difference / max |reference output|
    reference: str = "train"  # what agreement is measured against


@dataclass
class DemoReport:
    folder: str
    synthetic: bool
    arch: Any  # ArchSpec
    convert: Any  # jobs.convert.ConvertResult
    source: str  # the train-form checkpoint in the folder
    network: Optional[str] = None  # the trained network's name
    record: Optional[dict] = None  # assets.digits.training_record
    images: int = 0  # held-out images evaluated
    heldout: List[HeldoutResult] = field(default_factory=list)
    exports: List[Any] = field(default_factory=list)  # jobs.export.ExportResult
    missing: List[Tuple[str, str]] = field(default_factory=list)  # (extension, install hint)
    pngs: Optional[str] = None  # folder of the held-out PNGs, when Pillow is installed
    notes: List[str] = field(default_factory=list)

    @property
    def files(self) -> List[str]:
        out = [self.source, self.convert.dst]
        if not self.synthetic and self.network is not None:
            out.insert(1, assets.config_path(self.network).replace(assets.FOLDER, self.folder))
        return out + [e.dst for e in self.exports]


def _targets():
    """The export targets that execute on this platform, in the order they are shown."""
    from ..runtimes import TARGETS

    return [t for t in TARGETS.values() if t.executes_on in ("any", sys.platform)]


def planned_files(folder: str, network: Optional[str], arch_name: str) -> List[str]:
    """Every path the demo may write in ``folder`` (to refuse overwriting them)."""
    if network is None:
        return [os.path.join(folder, f"mobileone_{arch_name}_unfused.pth.tar"),
                os.path.join(folder, f"mobileone_{arch_name}.pth")]
    base = os.path.join(folder, network)
    return ([f"{base}_unfused.pth.tar", f"{base}.yaml", f"{base}.pth",
             os.path.join(folder, HELDOUT_FOLDER)]
            + [base + t.extension for t in _targets()])


def _claim(folder: str, planned: List[str], force: bool) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise BadInput(f"{folder}: exists and is not a folder")
    there = [p for p in planned if os.path.exists(p)]
    if there and not force:
        raise BadInput(f"{folder} already holds demo files ({os.path.basename(there[0])}"
                       f"{f' and {len(there) - 1} more' if len(there) > 1 else ''}); "
                       f"not overwriting them", hint="add --force, or choose another --dir")
    os.makedirs(folder, exist_ok=True)


def run_demo(folder: str = DEFAULT_FOLDER, *, network: str = assets.DEFAULT_NETWORK,
             synthetic: bool = False, arch=None, arch_source: Optional[str] = None,
             seed: int = 0, force: bool = False,
             progress: Optional[Progress] = None) -> DemoReport:
    """The demo in ``folder`` (see the module doc).  ``synthetic`` with ``arch`` (an ArchSpec;
    default s0) and ``seed``: the random-weight demo.  BadInput if ``folder`` holds demo files
    and not ``force``."""
    step = progress or (lambda what: None)
    if synthetic:
        return _synthetic(folder, arch, arch_source, seed, force, step)
    name = assets.network_name(network)
    _claim(folder, planned_files(folder, name, ""), force)
    from .convert import ConvertOptions, convert_file

    src = os.path.join(folder, f"{name}_unfused.pth.tar")
    config = os.path.join(folder, f"{name}.yaml")
    from ..io.write import atomic_write

    for origin, dst in ((assets.checkpoint_path(name), src), (assets.config_path(name), config)):
        atomic_write(dst, functools.partial(_copy_to, origin), force=True)
    spec = assets.arch(name)
    size = (assets.SIZE, assets.SIZE)
    step("convert and verify")
    result = convert_file(src, os.path.join(folder, f"{name}.pth"),
                          ConvertOptions(arch=spec, arch_source=f"--config {config}",
                                         input_size=size, force=True))
    report = DemoReport(folder=folder, synthetic=False, arch=spec, convert=result, source=src,
                        network=name, record=assets.training_record(name))
    _export_all(report, config, force=True, step=step)
    step("held-out images")
    _heldout(report)
    report.pngs = _pngs(folder)
    return report


def _synthetic(folder: str, arch, arch_source: Optional[str], seed: int, force: bool,
               step: Progress) -> DemoReport:
    from ..arch.memory import job_bytes, weight_elements
    from ..arch.specs import get_arch
    from ..io.write import save_checkpoint
    from ..models.synthetic import random_state_dict
    from ..platform import check_memory
    from .convert import ConvertOptions, convert_file

    arch = arch or get_arch("s0")
    check_memory(job_bytes(arch), f"the demo of {arch.name} ({weight_elements(arch):,} weights)",
                 hint="a config within the limits can still describe a network too large to "
                      "build; `mobileone stats --config FILE` counts it without building it")
    src, dst = planned_files(folder, None, arch.name)
    _claim(folder, [src, dst], force)
    step("synthesize")
    save_checkpoint(src, random_state_dict(arch, seed=seed), force=True)
    step("convert and verify")
    result = convert_file(src, dst, ConvertOptions(arch=arch if arch_source else None,
                                                   arch_source=arch_source, force=True))
    return DemoReport(folder=folder, synthetic=True, arch=arch, convert=result, source=src)


def _copy_to(origin: str, tmp: str) -> None:
    shutil.copyfile(origin, tmp)


def _export_all(report: DemoReport, config: str, *, force: bool, step: Progress) -> None:
    """Every target whose runtime is installed; the others are listed with what to install."""
    from .export import ExportOptions, export_file

    deploy = report.convert.dst
    stem = os.path.splitext(deploy)[0]
    for t in _targets():
        from ..runtimes import runtime_module

        try:
            runtime_module(t.module).require()
        except BadInput as exc:
            report.missing.append((t.extension, exc.hint or exc.message))
            continue
        step(f"export {t.extension}")
        report.exports.append(export_file(deploy, stem + t.extension, ExportOptions(
            arch=report.arch, arch_source=f"--config {config}",
            input_size=(assets.SIZE, assets.SIZE), force=force)))


def _heldout(report: DemoReport) -> None:
    """Every model on the held-out images; top-1 and agreement with the train model."""
    import torch

    from ..check.harness import load_model, strict_fp32
    from ..check.tally import Accuracy, Agreement
    from ..data.digits import heldout_images
    from ..data.pipeline import Preprocessing
    from ..io.read import load_checkpoint
    from ..quant.fakequant import SCHEMES
    from ..quant.measure import measure
    from .eval import artifact_model

    arch = report.arch
    x, y = heldout_images()
    names = [str(i) for i in range(len(y))]
    report.images = len(y)
    train = load_model(load_checkpoint(report.source).state_dict, arch, "train")
    deploy = load_model(load_checkpoint(report.convert.dst).state_dict, arch, "deploy")
    p = Preprocessing(resize=assets.SIZE, crop=(assets.SIZE, assets.SIZE))
    with strict_fp32("cpu"), torch.inference_mode():
        ref = train(x)
        runs = [("deploy", "PyTorch", report.convert.dst, deploy(x))]
        for e in report.exports:
            model = artifact_model(e.dst, arch, p)
            runs.append((os.path.splitext(e.dst)[1], RUNS_IN.get(e.target, e.runtime), e.dst,
                         model.run(x)))

    def scored(name, runs_in, path, out, reference="train", against=ref) -> HeldoutResult:
        acc, agree = Accuracy(arch.num_classes), Agreement(logits=True)
        acc.update(out, y)
        agree.update(against, out, names, y)
        return HeldoutResult(name=name, runs_in=runs_in, file=path, top1=acc.top1,
                             agreement=agree.agreement, disagreeing=agree.disagreeing,
                             max_rel=agree.max_rel,
                             reference=reference)

    acc = Accuracy(arch.num_classes)
    acc.update(ref, y)
    first = HeldoutResult(name="train", runs_in="PyTorch", file=report.source, top1=acc.top1,
                          agreement=None)
    report.heldout = [first] + [scored(*r) for r in runs]
    deploy_disagree = report.heldout[1].disagreeing

    def batches():
        yield x, y, names

    for scheme in SCHEMES:
        m = measure(deploy, batches, scheme=scheme, form="deploy", per_pass=len(y),
                    logits=True, num_classes=arch.num_classes)
        agreement = m.top1_agreement if m.top1_agreement is not None else 0.0
        report.heldout.append(HeldoutResult(
            name=f"int8 {scheme}", runs_in="fake quant", file=None,
            top1=m.accuracy_int8[0] if m.accuracy_int8 is not None else None,
            agreement=m.top1_agreement, disagreeing=round((1 - agreement) * m.images),
            max_rel=m.max_abs_diff / m.scale if m.scale else None,
            reference="train" if deploy_disagree == 0 else "deploy"))
    if deploy_disagree:
        report.notes.append("int8 rows agree with the fp32 deploy model, which differs from the "
                            f"train model's top-1 on {deploy_disagree} image(s)")


def _pngs(folder: str) -> Optional[str]:
    """The held-out images as PNGs for `mobileone eval`, when Pillow is installed."""
    from ..data.digits import write_heldout_pngs

    where = os.path.join(folder, HELDOUT_FOLDER)
    try:
        write_heldout_pngs(where)
    except BadInput:  # no Pillow: the demo itself never needs the files
        return None
    return where
