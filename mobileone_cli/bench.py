"""Measured CPU latency and peak memory of the train form against the deploy form.

Each form runs in its own fresh Python process (``python -m mobileone_cli.bench``), so that one
form's allocator caches, thread pools and warm-up cannot flatter the other, and so that the memory
figure is the process's own.  Memory is the resident set size (RSS) read from ``/proc/self``:
after the model and the input exist, the peak-RSS mark is reset (``/proc/self/clear_refs``) and the
peak reached during the warm-up and timed forward passes, minus the RSS before them, is the memory
the forward passes needed (activations, im2col buffers, allocator slack).  Where the mark cannot be
reset, ``ru_maxrss`` (the lifetime peak) is used and the figure is flagged as approximate.  Python-level tools such
as tracemalloc do not see tensor memory, which is why RSS is used.

Weights are random (latency does not depend on their values); the deploy model is the fusion of
the very same train state dict.  Importing this module does not import torch.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .arch import ArchSpec

__all__ = ["FormTiming", "BenchResult", "run_bench", "measure_form"]


@dataclass
class FormTiming:
    """One form's measurements; times in milliseconds per forward pass of the whole batch."""

    form: str
    times_ms: List[float]
    median_ms: float
    min_ms: float
    max_ms: float
    rss_before: int  # bytes resident once the model and the input exist
    peak_delta: int  # bytes of peak RSS above rss_before during the forward passes
    weight_bytes: int  # parameters + buffers of the model
    threads: int
    memory_method: str  # 'clear_refs' (peak of the passes) or 'ru_maxrss' (approximate)


@dataclass
class BenchResult:
    arch: str
    input_size: Tuple[int, int]
    batch: int
    threads: int
    warmup: int
    runs: int
    forms: Dict[str, FormTiming] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Median train latency / median deploy latency."""
        return self.forms["train"].median_ms / self.forms["deploy"].median_ms

    @property
    def memory_ratio(self) -> Optional[float]:
        d = self.forms["deploy"].peak_delta
        return self.forms["train"].peak_delta / d if d > 0 else None

    def to_dict(self) -> Dict[str, object]:
        return {"arch": self.arch, "input_size": list(self.input_size), "batch": self.batch,
                "threads": self.threads, "warmup": self.warmup, "runs": self.runs,
                "forms": {k: asdict(v) for k, v in self.forms.items()},
                "speedup": self.speedup, "memory_ratio": self.memory_ratio,
                "memory_measure": "peak RSS during the forward passes minus RSS before them, "
                                  "each form in its own process"}


def _proc_status_kb(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def measure_form(arch: ArchSpec, form: str, *, input_size: Sequence[int], batch: int,
                 threads: Optional[int], warmup: int, runs: int, seed: int = 0) -> FormTiming:
    """Time ``runs`` forward passes of one form in THIS process (call it in a fresh one)."""
    import gc
    import time

    import torch

    from .fusion import fuse_state_dict
    from .model import build_model
    from .synthetic import random_state_dict

    if threads:
        torch.set_num_threads(threads)
    sd = random_state_dict(arch, seed=seed)
    if form == "deploy":
        sd = fuse_state_dict(sd, arch)
    model = build_model(arch, form)
    model.load_state_dict(sd, strict=True)
    model.eval()
    del sd
    x = torch.randn(batch, arch.in_channels, int(input_size[0]), int(input_size[1]),
                    generator=torch.Generator().manual_seed(seed))
    weight_bytes = sum(t.numel() * t.element_size()
                       for t in list(model.parameters()) + list(model.buffers()))
    gc.collect()
    rss_before = _proc_status_kb("VmRSS") or _maxrss_bytes()
    method = "clear_refs" if _reset_peak() and _proc_status_kb("VmHWM") else "ru_maxrss"
    times: List[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1000.0)
    peak = (_proc_status_kb("VmHWM") if method == "clear_refs" else None) or _maxrss_bytes()
    return FormTiming(form=form, times_ms=times, median_ms=statistics.median(times),
                      min_ms=min(times), max_ms=max(times), rss_before=rss_before,
                      peak_delta=max(0, peak - rss_before), weight_bytes=weight_bytes,
                      threads=torch.get_num_threads(), memory_method=method)


def run_bench(arch: ArchSpec, *, input_size: Sequence[int] = (224, 224), batch: int = 1,
              threads: Optional[int] = None, warmup: int = 5, runs: int = 20,
              seed: int = 0, timeout: Optional[float] = None) -> BenchResult:
    """Measure the train form, then the deploy form, each in a fresh subprocess."""
    if batch < 1 or runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise ValueError("batch, runs and threads must be >= 1 and warmup >= 0")
    job = {"arch": arch.to_dict(), "input_size": [int(v) for v in input_size], "batch": batch,
           "threads": threads, "warmup": warmup, "runs": runs, "seed": seed}
    result = BenchResult(arch=arch.name, input_size=(int(input_size[0]), int(input_size[1])),
                         batch=batch, threads=threads or 0, warmup=warmup, runs=runs)
    for form in ("train", "deploy"):
        proc = subprocess.run([sys.executable, "-m", "mobileone_cli.bench", form],
                              input=json.dumps(job), capture_output=True, text=True,
                              timeout=timeout, env=_child_env())
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"benchmark of the {form} form failed: {tail}")
        result.forms[form] = FormTiming(**json.loads(proc.stdout.strip().splitlines()[-1]))
    result.threads = result.forms["train"].threads
    return result


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _arch_from_dict(d: Dict[str, object]) -> ArchSpec:
    return ArchSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _main(argv: Sequence[str]) -> int:
    form = argv[0]
    job = json.loads(sys.stdin.read())
    timing = measure_form(_arch_from_dict(job["arch"]), form, input_size=job["input_size"],
                          batch=job["batch"], threads=job["threads"], warmup=job["warmup"],
                          runs=job["runs"], seed=job["seed"])
    sys.stdout.write(json.dumps(asdict(timing)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
