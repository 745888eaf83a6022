"""What ``mobileone stats`` reports: analytic counts, a checkpoint's real tensor counts, timings.

The analytic numbers come from :mod:`mobileone_cli.counting`; for a checkpoint the architecture,
head size and form are detected from the tensor shapes, and the file's own tensors are summed so
that the report shows what the file holds next to what the architecture implies.  Reading a
``.safetensors`` file only parses its header, so that path never imports torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .arch import ArchSpec
from .counting import DEFAULT_SIZE, ArchStats, FileCount, arch_stats, file_count
from .errors import BadInput

__all__ = ["StatsReport", "stats_for_arch", "stats_for_checkpoint", "read_tensor_info",
           "report_to_dict", "bench_report"]


@dataclass
class StatsReport:
    stats: ArchStats
    source: Optional[str] = None  # checkpoint path, None for --arch
    layout: Optional[str] = None
    form: Optional[str] = None  # the checkpoint's form
    prefix: str = ""
    file_format: Optional[str] = None
    file: Optional[FileCount] = None
    bench: Optional[object] = None  # bench.BenchResult
    notes: List[str] = field(default_factory=list)

    @property
    def file_matches(self) -> Optional[bool]:
        """Whether the file's learnable tensors add up to the analytic count of its form."""
        if self.file is None or self.form is None:
            return None
        return self.file.params == self.stats.form(self.form).total.params


def _size(input_size) -> Tuple[int, int]:
    from .counting import parse_size

    try:
        return parse_size(input_size)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _stats(arch: ArchSpec, input_size) -> ArchStats:
    try:
        return arch_stats(arch, _size(input_size))
    except ValueError as exc:
        raise BadInput(f"--input-size: {exc}") from None


def stats_for_arch(arch: ArchSpec, input_size=DEFAULT_SIZE) -> StatsReport:
    """Counts of a named architecture; nothing is read."""
    return StatsReport(stats=_stats(arch, input_size))


def read_tensor_info(path: str, *, trust: bool = False
                     ) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...]]], str, str]:
    """({key: (dtype, shape)}, stripped prefix, file format) of a checkpoint.

    A safetensors file is read from its header alone (no torch); a torch file is loaded with
    ``weights_only`` (unless ``trust``) and memory-mapped where possible."""
    from .checkpoint import load_checkpoint, read_safetensors_header, sniff_format, strip_prefix

    fmt = sniff_format(path)
    if fmt == "safetensors":
        header, _meta = read_safetensors_header(path)
        tensors, stripped = strip_prefix(dict(header))
        return tensors, stripped, fmt
    from .detect import tensor_info

    ckpt = load_checkpoint(path, trust=trust)
    return tensor_info(ckpt.state_dict), ckpt.stripped_prefix, ckpt.file_format


def stats_for_checkpoint(path: str, arch: Optional[ArchSpec] = None,
                         input_size=DEFAULT_SIZE, *, trust: bool = False,
                         arch_source: Optional[str] = None) -> StatsReport:
    """Counts of the MobileOne in ``path``: architecture, classes and form from its tensors.

    ``arch`` (optional) must describe the same network; for a deploy file it also says how many
    conv branches the train form had, which a fused file no longer records."""
    from .detect import detect_layout

    tensors, stripped, fmt = read_tensor_info(path, trust=trust)
    det = detect_layout(tensors, where=path)
    spec = det.arch
    notes: List[str] = []
    if arch is not None and arch_source is not None:  # --config: differences named by field
        from .config import expect_arch

        arch = expect_arch(arch, det.arch, det.form, where=path, source=arch_source,
                           compare_head=True)
    if arch is not None:
        same = (arch.same_backbone(det.arch, ignore_branches=True) if det.form == "deploy"
                else arch.same_backbone(det.arch))
        if not same:
            raise BadInput(f"{path}: --arch {arch.name} does not match the checkpoint "
                           f"(it holds a {det.form}-form {det.arch.name})",
                           hint="leave --arch out to use the detected architecture")
        spec = dataclasses.replace(arch, num_classes=det.arch.num_classes)
    if det.form == "deploy":
        k = ", ".join(str(v) for v in spec.conv_branches)
        source = (f"the released {spec.name}" if arch is None and spec.name != "custom"
                  else ("--arch" if arch is not None else "an assumption"))
        notes.append(f"a deploy file does not record the train form's conv branches; the train "
                     f"column uses k = {k} per stage ({source})")
    report = StatsReport(stats=_stats(spec, input_size), source=path, layout=det.layout,
                         form=det.form, prefix=stripped + det.prefix, file_format=fmt,
                         notes=notes)
    report.file = file_count(tensors, det)
    if det.extra_keys:
        report.notes.append(f"{len(det.extra_keys)} tensor(s) in the file are not part of the "
                            f"MobileOne and are not counted as its parameters")
    if report.file_matches is False:
        report.notes.append(f"the file's learnable tensors hold {report.file.params:,} elements, "
                            f"the architecture implies "
                            f"{report.stats.form(det.form).total.params:,}")
    return report


def report_to_dict(report: StatsReport) -> Dict[str, object]:
    out: Dict[str, object] = report.stats.to_dict()
    if report.source is not None and report.file is not None:
        f = report.file
        out["checkpoint"] = {
            "path": report.source, "format": report.file_format, "layout": report.layout,
            "form": report.form, "prefix": report.prefix, "tensors": f.tensors,
            "params": f.params, "buffers": f.buffers, "other_elements": f.other,
            "bytes": f.bytes, "params_per_part": f.parts,
            "analytic_params": report.stats.form(report.form).total.params,
            "matches_analytic": report.file_matches,
        }
    if report.bench is not None:
        out["bench"] = report.bench.to_dict()
    out["notes"] = list(report.notes)
    return out


def bench_report(report: StatsReport, **kwargs) -> StatsReport:
    """Add measured latency and memory of both forms (see :mod:`mobileone_cli.bench`)."""
    from .bench import run_bench

    try:
        report.bench = run_bench(report.stats.arch, input_size=report.stats.input_size, **kwargs)
    except ValueError as exc:
        raise BadInput(f"--bench: {exc}") from None
    return report
