"""ExecuTorch programs (``.pte``, XNNPACK delegate) and the ExecuTorch runtime, the ``executorch``
extra.

Export: ``torch.export.export`` -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner ->
``to_executorch``.  Facts of executorch 1.5 this module works around:

* A dynamic batch must be traced on an example batch of at least 16: with 2..15 a lowering pass
  re-runs torch's fake convolution, whose backend guard narrows the batch range to [2, 15], and
  the program's input buffer is planned for 15 images whatever the requested maximum (batch 16
  then fails at run time).  An example batch of 1 specialises the axis away, and so does an
  example equal to the maximum (16 of 1..16 gives a static program): the maximum must exceed
  16.  The planned size is read back after writing and must be the requested maximum; the
  maximum is also stored in the program as the constant method ``max_batch``.
* Memory for activations is planned ahead for the largest shape: a dynamic batch costs
  ``max_batch`` times the activations of one image when the program loads.
* fp16: the model is converted to float16 before export; XNNPACK computes in fp16 and the
  program takes and returns float16 tensors.

Run: the runtime's Python binding (``portable_lib``), which loads without ``executorch.exir``;
its C++ core prints CPU-detection lines to stderr on first use, muted here.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..errors import BadInput, VerificationFailed, first_line
from ._common import no_fd2, quiet, write_program
from ._common import require as _require
from .base import Artifact, ExportPlan, Runtime

__all__ = ["RUNTIME", "export", "example", "lower", "load", "require", "set_threads",
           "INSTALL_HINT",
           "MIN_EXAMPLE_BATCH"]

INSTALL_HINT = ("pip install 'mobileone-cli[executorch]'  (or the plain package, next to the "
                "torch you have: pip install torch==<your torch> executorch)")
MIN_EXAMPLE_BATCH = 16  # see the module docstring
_DTYPES = {6: "float32", 5: "float16"}  # ExecuTorch ScalarType codes


def require() -> None:
    _require(("executorch",), INSTALL_HINT)


def export(model, path: str, *, sample, max_batch: Optional[int] = None) -> Dict[str, Any]:
    """Lower ``model`` (eval mode, in the dtype it should run in) traced on ``sample`` to a
    ``.pte`` at ``path``.  ``max_batch``: make the batch axis dynamic up to that size."""
    import torch

    require()
    sample, dynamic = example(sample, max_batch)
    with quiet(), torch.no_grad():
        try:
            program = torch.export.export(model, (sample,), dynamic_shapes=dynamic)
        except Exception as exc:  # torch.export raises many types; the message is what matters
            raise VerificationFailed(f"torch.export failed: {exc.__class__.__name__}: "
                                     f"{first_line(str(exc), 200)}") from None
    return lower(program, path, max_batch=max_batch)


def example(sample, max_batch: Optional[int]):
    """(example input, dynamic_shapes) for torch.export: see the module docstring for why a
    dynamic batch is traced on 16 images and needs a maximum above 16."""
    import torch

    if max_batch is None:
        return sample, None
    if max_batch <= MIN_EXAMPLE_BATCH:
        raise BadInput(f"--max-batch {max_batch}: an ExecuTorch program with a dynamic batch "
                       f"needs a maximum above {MIN_EXAMPLE_BATCH}",
                       hint="or fix the batch with --batch N")
    sample = sample[:1].expand(MIN_EXAMPLE_BATCH, *sample.shape[1:]).contiguous()
    return sample, ({0: torch.export.Dim("batch", min=1, max=max_batch)},)


def lower(program, path: str, *, max_batch: Optional[int] = None) -> Dict[str, Any]:
    """Lower an ``ExportedProgram`` (e.g. a PT2E-quantized one) with the XNNPACK partitioner and
    write the ``.pte`` to ``path``; returns the ops left outside the delegate."""
    import torch

    require()
    with quiet(), torch.no_grad():
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower

            edge = to_edge_transform_and_lower(
                program, partitioner=[XnnpackPartitioner()],
                constant_methods={"max_batch": max_batch} if max_batch is not None else None)
            ops = sorted({str(n.target) for n in edge.exported_program().graph.nodes
                          if n.op == "call_function"} - {"executorch_call_delegate",
                                                         "<built-in function getitem>"})
            buffer = edge.to_executorch().buffer
        except Exception as exc:  # the lowering raises many types; the message is what matters
            raise VerificationFailed(f"ExecuTorch lowering failed: {exc.__class__.__name__}: "
                                     f"{first_line(str(exc), 200)}") from None
    write_program(path, buffer)
    return {"outside_delegate": [_op_name(o) for o in ops]}


def _op_name(target: str) -> str:
    """'aten.mean.dim' of '<EdgeOpOverload: aten.mean.dim>: schema = ...'."""
    if target.startswith("<") and ": " in target and ">" in target:
        return target[target.index(": ") + 2:target.index(">")]
    return target.split(":")[0].strip("<>")


def _binding():
    import torch  # noqa: F401  (loads libtorch, which the binding links against)

    with quiet():
        from executorch.extension.pybindings import portable_lib
    return portable_lib


def set_threads(threads: Optional[int]) -> int:
    """Size the runtime's (process-wide) thread pool; returns the thread count in use."""
    lib = _binding()
    with no_fd2():  # the pool's first use runs cpuinfo, which prints to stderr
        if threads:
            lib._unsafe_reset_threadpool(int(threads))
        return int(lib._threadpool_get_thread_count())


def load(path: str, threads: Optional[int] = None) -> Artifact:
    """``path`` in the ExecuTorch runtime (XNNPACK and portable kernels, CPU)."""
    require()
    import torch

    lib = _binding()
    n_threads = set_threads(threads)
    try:
        with no_fd2():
            module = lib._load_for_executorch(path)
            meta = module.method_meta("forward")
            inp, out = meta.input_tensor_meta(0), meta.output_tensor_meta(0)
            max_batch = (int(module.run_method("max_batch", ())[0])
                         if "max_batch" in module.method_names() else None)
    except Exception as exc:  # the binding raises RuntimeError with an error code
        raise VerificationFailed(f"the ExecuTorch runtime cannot load {path}: "
                                 f"{first_line(str(exc))}") from None
    dtype = _DTYPES.get(int(inp.dtype()), str(inp.dtype()))
    first = [True]

    def run(x):
        x = x.to(torch.float16 if dtype == "float16" else torch.float32).contiguous()
        try:
            if first[0]:
                with no_fd2():  # cpuinfo's lines on the first execution
                    got = module.forward((x,))[0]
                first[0] = False
            else:
                got = module.forward((x,))[0]
        except Exception as exc:
            raise VerificationFailed(f"the ExecuTorch runtime failed at input shape "
                                     f"{list(x.shape)}: {first_line(str(exc))}") from None
        return got.clone()

    shape, out_shape = list(inp.sizes()), list(out.sizes())
    if max_batch is not None:
        shape[0] = out_shape[0] = "batch"
    return Artifact(path=path, runtime="executorch", kind="executorch", input_name="input",
                    input_shape=shape, output_shape=out_shape, input_dtype=dtype, run=run,
                    weight_dtype=dtype,
                    details={"planned_input": list(inp.sizes()), "threads": n_threads,
                             "max_batch": max_batch})


class ExecuTorchRuntime(Runtime):
    module = "executorch"
    extension = ".pte"
    runtime = "ExecuTorch (XNNPACK)"
    extra = "executorch"
    dynamic_size = False
    default_batch = 1
    fp16_input = True
    fp16_compute = "float16"  # XNNPACK runs fp16 convolutions in fp16 on this CPU

    def require(self) -> None:
        require()

    def plan(self, options: Any, plan: ExportPlan) -> None:
        if plan.max_batch is not None and plan.max_batch <= MIN_EXAMPLE_BATCH:
            raise BadInput(f"--max-batch {plan.max_batch}: an ExecuTorch program with a dynamic "
                           f"batch needs a maximum above {MIN_EXAMPLE_BATCH}",
                           hint="or fix the batch with --batch N")

    def export(self, net: Any, path: str, *, sample: Any, options: Any, plan: ExportPlan,
               output_name: str, facts: Dict[str, Any], notes: List[str]) -> Dict[str, Any]:
        return export(net, path, sample=sample, max_batch=plan.max_batch)

    def load(self, path: str, threads: Optional[int] = None) -> Artifact:
        return load(path, threads=threads)

    def check_written(self, path: str, artifact: Artifact, options: Any, plan: ExportPlan,
                      facts: Dict[str, Any]) -> None:
        planned = artifact.details["planned_input"][0]
        if planned != (plan.max_batch or plan.batch):
            raise VerificationFailed(f"the ExecuTorch program was planned for a batch of "
                                     f"{planned}, not {plan.max_batch or plan.batch}")


RUNTIME = ExecuTorchRuntime()
