"""A real int8 ExecuTorch program: PT2E post-training quantization with the XNNPACK quantizer.

``torch.export`` -> ``prepare_pt2e`` (XNNPACK's symmetric config: int8 weights per channel or
per tensor, affine int8 activations with torch's histogram observer) -> calibration on the
same images as the measurement -> ``convert_pt2e`` -> ``torch.export`` of the Q/DQ graph ->
:func:`mobileone_cli.runtimes.executorch.lower` (the XNNPACK partitioner, as ``export`` uses).
The ``executorch`` extra brings torchao with it; the program takes one fp32 image (batch 1).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable

import torch

from ..errors import VerificationFailed, first_line
from ..runtimes._common import quiet
from ..runtimes._common import require as _require
from ..runtimes.executorch import INSTALL_HINT, lower

__all__ = ["require", "quantize_program", "write_program"]


def require() -> None:
    """BadInput naming the extra when executorch (or its torchao) is missing."""
    _require(("executorch", "torchao"), INSTALL_HINT)


def quantize_program(net: torch.nn.Module, sample: torch.Tensor,
                     calibration: Iterable[torch.Tensor], *, per_channel: bool):
    """``net`` (eval mode, fp32) quantized by PT2E and calibrated on every image of
    ``calibration`` (tensors of shape ``sample.shape``): the converted Q/DQ graph module."""
    with quiet():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    with quiet(), torch.no_grad():
        try:
            graph = torch.export.export(net, (sample,)).module()
            quantizer = XNNPACKQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=per_channel))
            prepared = prepare_pt2e(graph, quantizer)
            for x in calibration:
                prepared(x)
            return convert_pt2e(prepared)
        except Exception as exc:  # torch.export and torchao raise many types
            raise VerificationFailed(f"PT2E quantization failed: {exc.__class__.__name__}: "
                                     f"{first_line(str(exc), 200)}") from None


def write_program(converted, sample: torch.Tensor, path: str) -> Dict[str, Any]:
    """Export the quantized graph and lower it to an XNNPACK ``.pte`` at ``path``."""
    with quiet(), torch.no_grad():
        try:
            program = torch.export.export(converted, (sample,))
        except Exception as exc:
            raise VerificationFailed(f"torch.export of the quantized graph failed: "
                                     f"{exc.__class__.__name__}: {first_line(str(exc), 200)}") \
                from None
    return lower(program, path)
