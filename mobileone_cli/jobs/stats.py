"""What ``mobileone stats`` reports: analytic counts, a checkpoint's real tensor counts, timings.

The analytic numbers come from :mod:`.counting`; for a checkpoint the architecture,
head size and form are detected from the tensor shapes, and the file's own tensors are summed so
that the report shows what the file holds next to what the architecture implies.  Reading a
``.safetensors`` file only parses its header, so that path never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..arch.counting import DEFAULT_SIZE, ArchStats, FileCount, arch_stats, file_count
from ..arch.specs import ArchSpec
from ..errors import BadInput
from ..timing import Steps

__all__ = ["StatsReport", "stats_for_arch", "stats_for_checkpoint", "bench_report"]


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
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def file_matches(self) -> Optional[bool]:
        """Whether the file's learnable tensors add up to the analytic count of its form."""
        if self.file is None or self.form is None:
            return None
        return self.file.params == self.stats.form(self.form).total.params


def _stats(arch: ArchSpec, input_size) -> ArchStats:
    try:
        return arch_stats(arch, input_size)
    except ValueError as exc:  # the image is too small for the network's strides
        raise BadInput(f"--input-size: {exc}") from None


def stats_for_arch(arch: ArchSpec, input_size=DEFAULT_SIZE) -> StatsReport:
    """Counts of a named architecture; nothing is read."""
    steps = Steps()
    with steps("count"):
        stats = _stats(arch, input_size)
    return StatsReport(stats=stats, timings=steps.seconds)


def stats_for_checkpoint(path: str, arch: Optional[ArchSpec] = None,
                         input_size=DEFAULT_SIZE, *, trust: bool = False,
                         arch_source: Optional[str] = None) -> StatsReport:
    """Counts of the MobileOne in ``path``: architecture, classes and form from its tensors.

    ``arch`` (optional) must describe the same network; for a deploy file it also says how many
    conv branches the train form had, which a fused file no longer records."""
    from ..arch.specs import expect_arch
    from ..io.contents import list_tensors
    from ..io.detect import detect_layout
    from ..io.remote import local_path

    path = local_path(path)  # a name (apple:s0, hf-hub:...): its checked cache file
    steps = Steps()
    with steps("load"):
        listing = list_tensors(path, trust=trust)
    tensors = listing.tensors
    with steps("detect"):
        det = detect_layout(tensors, where=path)
    spec = det.arch
    notes: List[str] = []
    if arch is not None:
        spec = expect_arch(arch, det.arch, det.form, where=path, source=arch_source or "--arch",
                           compare_head=arch_source is not None)
    if det.form == "deploy":
        k = ", ".join(str(v) for v in spec.conv_branches)
        source = (f"the released {spec.name}" if arch is None and spec.name != "custom"
                  else ("--arch" if arch is not None else "an assumption"))
        notes.append(f"a deploy file does not record the train form's conv branches; the train "
                     f"column uses k = {k} per stage ({source})")
    with steps("count"):
        stats = _stats(spec, input_size)
        count = file_count(tensors, det)
    report = StatsReport(stats=stats, source=path, layout=det.layout,
                         form=det.form, prefix=listing.stripped_prefix + det.prefix,
                         file_format=listing.file_format, notes=notes, timings=steps.seconds)
    report.file = count
    if det.extra_keys:
        report.notes.append(f"{len(det.extra_keys)} tensor(s) in the file are not part of the "
                            f"MobileOne and are not counted as its parameters")
    if report.file_matches is False:
        report.notes.append(f"the file's learnable tensors hold {report.file.params:,} elements, "
                            f"the architecture implies "
                            f"{report.stats.form(det.form).total.params:,}")
    return report


def bench_report(report: StatsReport, **kwargs) -> StatsReport:
    """Add measured latency and memory of both forms (see :mod:`.bench`)."""
    from ..arch.memory import job_bytes, weight_elements
    from ..platform import check_memory
    from .stats_bench import run_bench

    arch, size = report.stats.arch, report.stats.input_size
    batch = int(kwargs.get("batch", 1))
    check_memory(job_bytes(arch, size, per_pass=batch, images=batch),
                 f"--bench of {arch.name} ({weight_elements(arch):,} weights) at batch {batch} "
                 f"of {size[0]}x{size[1]}",
                 hint="use a smaller --batch or --input-size; without --bench, stats only "
                      "counts, which needs no memory")
    steps = Steps()
    try:
        with steps("bench"):
            report.bench = run_bench(report.stats.arch, input_size=report.stats.input_size,
                                     **kwargs)
    except ValueError as exc:
        raise BadInput(f"--bench: {exc}") from None
    report.timings.update(steps.seconds)
    return report
