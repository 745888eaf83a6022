"""LiteRT flatbuffers (``.tflite``) and the LiteRT interpreter, the ``litert`` extra.

Export: ``litert_torch.convert`` -> ``.export``.  The input stays NCHW, as in PyTorch.  Facts of
litert-torch 0.10 this module works around:

* a dynamic batch needs an example batch of at least 2 (torch.export specialises size 1), and the
  model's ``flatten(AdaptiveAvgPool2d(1)(x), 1)`` head does not lower with a dynamic batch: the
  exported module is :class:`~mobileone_cli.models.mobileone.MeanPoolHead` (the same function);
* fp16 (``full_fp16_recipe``) stores conv and linear WEIGHTS as float16 behind DEQUANTIZE ops
  and keeps BIASES in float32; the input and output stay float32.  :func:`stored_weights` says
  exactly that, so the check's reference holds the file's numbers.

* inputs passed positionally are named ``args_0``; passed as a keyword they keep its name, so
  the module is exported behind :func:`_named` and called with ``input=``: the signature's input
  is ``input`` (as in ONNX) and its output the ONNX output's name (``logits``/``features``).
  The flatbuffer's tensors carry the signature's prefix (``serving_default_input``); that
  prefix is the converter's and stays.

Run: ``ai_edge_litert.interpreter.Interpreter`` (XNNPACK delegate on CPU).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ..errors import VerificationFailed, first_line
from ._common import no_fd2, quiet, quiet_env, write_program
from ._common import require as _require
from .base import Artifact, ExportPlan, Runtime

__all__ = ["RUNTIME", "export", "load", "require", "stored_weights", "INSTALL_HINT"]

INSTALL_HINT = ("pip install 'mobileone-cli[litert]'  (or the plain packages, next to the torch "
                "you have: pip install torch==<your torch> litert-torch ai-edge-litert; ~2 GB)")


def require(convert: bool = True) -> None:
    """``convert``: the converter too (running needs only ai-edge-litert)."""
    _require(("ai_edge_litert",) + (("litert_torch",) if convert else ()), INSTALL_HINT)


def stored_weights(deploy_sd: Mapping[str, Any], dtype: str) -> Dict[str, Any]:
    """The deploy weights as a ``dtype`` export stores them (fp16: weights of rank >= 2 in
    float16, biases float32), as float64 tensors."""
    import torch

    def one(v):
        if dtype == "fp16" and v.ndim >= 2:
            v = v.to(torch.float16)
        return v.to(torch.float32).to(torch.float64)

    return {k: one(v) for k, v in deploy_sd.items()}


INPUT_NAME = "input"


def _named(model, output_name: str):
    """``model`` as a module whose one argument is called ``input`` and whose one output is
    ``{output_name: y}``: the names litert-torch gives the signature."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, input):  # noqa: A002 -- the name is the file's input name
            return {output_name: self.net(input)}

    return Named().eval()


def export(model, path: str, *, sample, max_batch: Optional[int] = None,
           dtype: str = "fp32", output_name: str = "output") -> Dict[str, Any]:
    """Convert ``model`` (fp32, eval mode) traced on ``sample`` to a ``.tflite`` at ``path``.
    ``max_batch``: a dynamic batch axis up to that size; ``dtype`` 'fp16': float16 weights."""
    import torch

    require()
    kwargs: Dict[str, Any] = {}
    if max_batch is not None:
        sample = sample[:1].expand(2, *sample.shape[1:]).contiguous()
        kwargs["dynamic_shapes"] = {INPUT_NAME: {0: torch.export.Dim("batch", min=1,
                                                                      max=max_batch)}}
    with quiet(), torch.no_grad():
        try:
            import litert_torch

            if dtype == "fp16":
                from litert_torch.generative.quantize import quant_recipes

                kwargs["quant_config"] = quant_recipes.full_fp16_recipe()
            # The bytes, written below (write_program): not the converter's own writer.
            content = litert_torch.convert(_named(model, output_name), (),
                                           sample_kwargs={INPUT_NAME: sample},
                                           **kwargs).model_content()
        except Exception as exc:  # the converter raises many types; the message is what matters
            raise VerificationFailed(f"LiteRT conversion failed: {exc.__class__.__name__}: "
                                     f"{first_line(str(exc), 200)}") from None
    write_program(path, content)
    return {}


def _weight_dtype(path: str) -> str:
    """'float16' when the file stores any float16 constant, else 'float32'."""
    import ai_edge_litert.schema_py_generated as schema

    with open(path, "rb") as fh:
        buf = fh.read()
    model = schema.Model.GetRootAsModel(buf, 0)
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = model.Buffers(t.Buffer())
            if t.Type() == schema.TensorType.FLOAT16 and (b.DataLength() > 0 or b.Offset() > 1):
                return "float16"
    return "float32"


def load(path: str, threads: Optional[int] = None) -> Artifact:
    """``path`` in the LiteRT interpreter (CPU)."""
    require(convert=False)
    quiet_env()
    import numpy as np
    import torch

    try:
        with quiet():
            from ai_edge_litert.interpreter import Interpreter

            interp = Interpreter(model_path=path, num_threads=threads)
            interp.allocate_tensors()
        weight_dtype = _weight_dtype(path)
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError for bad files
        raise VerificationFailed(f"the LiteRT interpreter cannot load {path}: "
                                 f"{first_line(str(exc))}") from None
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    # The signature's names (``input``) where the file has one signature, else the tensor's.
    signatures = interp.get_signature_list()
    sig_inputs = next(iter(signatures.values())).get("inputs", []) if len(signatures) == 1 else []
    input_name = sig_inputs[0] if len(sig_inputs) == 1 else inp["name"]
    signature = [int(d) for d in inp["shape_signature"]]
    dtype = "float16" if inp["dtype"] == np.float16 else "float32"
    state = {"shape": list(inp["shape"])}

    def run(x):
        x = x.to(torch.float16 if dtype == "float16" else torch.float32).contiguous()
        try:
            with no_fd2():  # the XNNPACK delegate announces itself on every allocation
                if list(x.shape) != state["shape"]:
                    interp.resize_tensor_input(inp["index"], list(x.shape), strict=True)
                    interp.allocate_tensors()
                    state["shape"] = list(x.shape)
                interp.set_tensor(inp["index"], x.numpy())
                interp.invoke()
            return torch.from_numpy(interp.get_tensor(out["index"]).copy())
        except Exception as exc:
            raise VerificationFailed(f"the LiteRT interpreter failed at input shape "
                                     f"{list(x.shape)}: {first_line(str(exc))}") from None

    def dims(sig, shape):
        return ["batch" if s < 0 and i == 0 else (f"dim{i}" if s < 0 else int(v))
                for i, (s, v) in enumerate(zip(sig, shape))]

    return Artifact(path=path, runtime="litert", kind="litert", input_name=str(input_name),
                    input_shape=dims(signature, inp["shape"]),
                    output_shape=dims([int(d) for d in out["shape_signature"]], out["shape"]),
                    input_dtype=dtype, run=run, weight_dtype=weight_dtype,
                    details={"threads": threads})


class LiteRTRuntime(Runtime):
    module = "litert"
    extension = ".tflite"
    runtime = "LiteRT interpreter"
    extra = "litert"
    dynamic_size = False
    default_batch = 1
    fp16_input = False
    fp16_compute = "float32"  # fp16 weights, dequantized by the interpreter: fp32 arithmetic

    def require(self) -> None:
        require()

    def export(self, net: Any, path: str, *, sample: Any, options: Any, plan: ExportPlan,
               output_name: str, facts: Dict[str, Any], notes: List[str]) -> Dict[str, Any]:
        return export(net, path, sample=sample, max_batch=plan.max_batch, dtype=plan.dtype,
                      output_name=output_name)

    def load(self, path: str, threads: Optional[int] = None) -> Artifact:
        return load(path, threads=threads)

    def stored_weights(self, deploy_sd: Mapping[str, Any], dtype: str) -> Optional[Dict[str, Any]]:
        return stored_weights(deploy_sd, dtype)


RUNTIME = LiteRTRuntime()
