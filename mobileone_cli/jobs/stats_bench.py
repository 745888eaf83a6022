"""Measured CPU latency and peak memory of the train form against the deploy form.

Each form runs in its own fresh Python process (``python -m mobileone_cli.jobs.stats_bench``), so
that one form's allocator caches, thread pools and warm-up cannot flatter the other, and so that
the memory figure is the process's own.  Two memory figures are reported.  Peak tensor memory is
exact and repeatable: one extra forward pass runs under a dispatch mode that tracks every op's
output tensor from creation to release (:func:`peak_tensor_bytes`).  Peak RSS is what the OS saw,
read from ``/proc/self``:
after the warm-up passes (which also pay one-off costs such as lazily loaded kernels), freed heap
is handed back to the OS (glibc ``malloc_trim``) and the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``); the peak reached during the timed passes minus the RSS before them
is the memory one forward pass needs (activations, scratch buffers, allocator slack).  Where the
mark cannot be reset, ``ru_maxrss`` (the lifetime peak) is used and the figure is flagged as
approximate; it includes allocator slack and library scratch, so at batch 1 it is noisy.
Python-level tools such as tracemalloc do not see tensor memory.

Weights are random (latency does not depend on their values); the deploy model is the fusion of
the very same train state dict.  Importing this module does not import torch.

``runtime`` other than torch: each form is exported to that runtime's artifact in its process
(the exporter runs before the clock starts) and the artifact is timed through
:func:`runtimes.load_artifact` (its ``run`` converts the input tensor; that is microseconds).
Threads are the runtime's: onnxruntime's intra-op threads, ExecuTorch's thread pool, the LiteRT
interpreter's ``num_threads``.  Peak tensor memory is a torch measure (0 for the others).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..arch.specs import ArchSpec

__all__ = ["FormTiming", "BenchResult", "run_bench", "measure_form", "BENCH_RUNTIMES"]

# --runtime name -> runtime module (None: eager PyTorch)
BENCH_RUNTIMES = {"torch": None, "onnxruntime": "onnx", "executorch": "executorch",
                  "litert": "litert"}


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
    peak_tensors: int  # bytes of the tensors a forward pass creates that are alive at once, peak
    weight_bytes: int  # parameters + buffers of the model
    threads: int
    memory_method: str  # 'clear_refs' (peak of the passes) or 'ru_maxrss' (approximate)
    p90_ms: float = 0.0
    runtime: str = "torch"


@dataclass
class BenchResult:
    arch: str
    input_size: Tuple[int, int]
    batch: int
    threads: int
    warmup: int
    runs: int
    forms: Dict[str, FormTiming] = field(default_factory=dict)
    runtime: str = "torch"

    @property
    def speedup(self) -> float:
        """Median train latency / median deploy latency."""
        return self.forms["train"].median_ms / self.forms["deploy"].median_ms

    @property
    def memory_ratio(self) -> Optional[float]:
        """Peak tensor memory of a forward pass, train / deploy."""
        d = self.forms["deploy"].peak_tensors
        return self.forms["train"].peak_tensors / d if d > 0 else None

    @property
    def rss_ratio(self) -> Optional[float]:
        d = self.forms["deploy"].peak_delta
        return self.forms["train"].peak_delta / d if d > 0 else None

    def to_dict(self) -> Dict[str, object]:
        return {"arch": self.arch, "runtime": self.runtime,
                "input_size": list(self.input_size), "batch": self.batch,
                "threads": self.threads, "warmup": self.warmup, "runs": self.runs,
                "forms": {k: asdict(v) for k, v in self.forms.items()},
                "speedup": self.speedup, "memory_ratio": self.memory_ratio,
                "rss_ratio": self.rss_ratio,
                "memory_measure": {
                    "peak_tensors": "largest total size of the tensors one forward pass has "
                                    "alive at the same time (every op output tracked)",
                    "peak_delta": "peak RSS during the timed passes minus RSS before them, "
                                  "each form in its own process"}}


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


def _release_free_heap() -> None:
    """Hand memory that is freed but still mapped back to the OS (glibc ``malloc_trim``), so
    that the forward passes must fault in the pages they use instead of silently reusing pages
    left over from building the model; without it the RSS delta undercounts."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_tensor_bytes(model, x) -> int:
    """Largest total size of the tensors one forward pass has alive at the same time.

    Every op's output storage is counted from the moment it is created until its last Python
    reference dies (a dispatch mode sees every op; views share their base's storage and are
    not counted twice).  Weights and the input are not included; scratch memory inside an op
    (e.g. a convolution's workspace) is not visible here but is in the RSS figure."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Tracker(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:  # never under torch.compile: no wrapper, whose
            return False  # first op imports torch._dynamo (~1.2 s of a bench process)

        def __init__(self) -> None:
            super().__init__()
            self.live: Dict[int, int] = {}
            self.now = 0
            self.peak = 0

        def release(self, key: int) -> None:
            self.now -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key and key not in self.live:
                        self.live[key] = storage.nbytes()
                        self.now += storage.nbytes()
                        self.peak = max(self.peak, self.now)
                        weakref.finalize(t, self.release, key)
            return out

    with torch.inference_mode():
        with Tracker() as tracker:
            model(x)
    return tracker.peak


def _maxrss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _p90(times: List[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def _runner(model, x, runtime: str, threads: Optional[int], workdir: str):
    """(forward callable, threads in use) for ``model`` in ``runtime`` (the export happens
    here, before any timing)."""
    import torch

    name = BENCH_RUNTIMES[runtime]
    if name is None:
        return (lambda: model(x)), torch.get_num_threads()
    from ..runtimes import load_artifact, runtime_module

    mod = runtime_module(name)
    mod.require()
    path = os.path.join(workdir, "model" + {"onnx": ".onnx", "executorch": ".pte",
                                            "litert": ".tflite"}[name])
    if name == "onnx":
        mod.export(model, path, sample=x, dynamic_batch=False, dynamic_size=False, opset=None,
                   exporter=mod.resolve_exporter(), output_name="logits")
    else:
        from ..models.mobileone import MeanPoolHead

        mod.export(MeanPoolHead(model), path, sample=x)
    art = load_artifact(path, kind=name, threads=threads)
    used = art.details.get("threads") or (threads or 0)
    return (lambda: art.run(x)), int(used)


def measure_form(arch: ArchSpec, form: str, *, input_size: Sequence[int], batch: int,
                 threads: Optional[int], warmup: int, runs: int, seed: int = 0,
                 runtime: str = "torch") -> FormTiming:
    """Time ``runs`` forward passes of one form in THIS process (call it in a fresh one)."""
    import tempfile

    import torch

    from ..fuse.fusion import fuse_state_dict
    from ..models.mobileone import build_model
    from ..models.synthetic import random_state_dict

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
    with tempfile.TemporaryDirectory() as workdir:
        forward, used_threads = _runner(model, x, runtime, threads, workdir)  # exports here
        times, rss_before, method, peak = _time(forward, warmup, runs)
    # after the RSS reading: it adds Python objects; a torch measure only
    peak_tensors = peak_tensor_bytes(model, x) if runtime == "torch" else 0
    return FormTiming(form=form, times_ms=times, median_ms=statistics.median(times),
                      min_ms=min(times), max_ms=max(times), rss_before=rss_before,
                      peak_delta=max(0, peak - rss_before), peak_tensors=peak_tensors,
                      weight_bytes=weight_bytes, threads=used_threads,
                      memory_method=method, p90_ms=_p90(times), runtime=runtime)


def _time(forward, warmup: int, runs: int):
    """(times in ms, RSS before, memory method, peak RSS) of ``runs`` calls after ``warmup``."""
    import gc
    import time

    import torch

    times: List[float] = []
    with torch.inference_mode():
        for _ in range(warmup):  # also pays one-off costs: lazy init, code pages
            forward()
        gc.collect()
        _release_free_heap()
        rss_before = _proc_status_kb("VmRSS") or _maxrss_bytes()
        method = "clear_refs" if _reset_peak() and _proc_status_kb("VmHWM") else "ru_maxrss"
        for _ in range(runs):
            t0 = time.perf_counter()
            forward()
            times.append((time.perf_counter() - t0) * 1000.0)
    peak = (_proc_status_kb("VmHWM") if method == "clear_refs" else None) or _maxrss_bytes()
    return times, rss_before, method, peak


def run_bench(arch: ArchSpec, *, input_size: Sequence[int] = (224, 224), batch: int = 1,
              threads: Optional[int] = None, warmup: int = 5, runs: int = 20,
              seed: int = 0, timeout: Optional[float] = None,
              runtime: str = "torch") -> BenchResult:
    """Measure the train form, then the deploy form, each in a fresh subprocess, in
    ``runtime`` (a key of BENCH_RUNTIMES)."""
    if min(batch, runs, warmup, threads or 1) < 1:
        raise ValueError("batch, runs, warmup and threads must be >= 1")
    if runtime not in BENCH_RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(BENCH_RUNTIMES)}")
    module = BENCH_RUNTIMES[runtime]
    if module is not None:  # refuse here, with the install hint, not in a child
        from ..runtimes import runtime_module

        runtime_module(module).require()
    job = {"arch": arch.to_dict(), "input_size": [int(v) for v in input_size], "batch": batch,
           "threads": threads, "warmup": warmup, "runs": runs, "seed": seed,
           "runtime": runtime}
    result = BenchResult(arch=arch.name, input_size=(int(input_size[0]), int(input_size[1])),
                         batch=batch, threads=threads or 0, warmup=warmup, runs=runs,
                         runtime=runtime)
    for form in ("train", "deploy"):
        proc = subprocess.run([sys.executable, "-m", "mobileone_cli.jobs.stats_bench", form],
                              input=json.dumps(job), capture_output=True, text=True,
                              timeout=timeout, env=_child_env())
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            if proc.returncode in (-9, 137) or _out_of_memory(proc.stderr):
                # killed by the kernel, or an allocation refused: the input asked too much
                raise MemoryError(f"benchmark of the {form} form: {tail}")
            raise RuntimeError(f"benchmark of the {form} form failed: {tail}")
        result.forms[form] = FormTiming(**json.loads(proc.stdout.strip().splitlines()[-1]))
    result.threads = result.forms["train"].threads
    return result


def _out_of_memory(stderr: str) -> bool:
    from ..errors import is_out_of_memory

    tail = stderr[-4000:]
    return "MemoryError" in tail or is_out_of_memory(RuntimeError(tail))


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _arch_from_dict(d: Dict[str, Any]) -> ArchSpec:
    fields: Dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return ArchSpec(**fields)


def _main(argv: Sequence[str]) -> int:
    form = argv[0]
    job = json.loads(sys.stdin.read())
    timing = measure_form(_arch_from_dict(job["arch"]), form, input_size=job["input_size"],
                          batch=job["batch"], threads=job["threads"], warmup=job["warmup"],
                          runs=job["runs"], seed=job["seed"], runtime=job.get("runtime", "torch"))
    sys.stdout.write(json.dumps(asdict(timing)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
