"""The dtypes tensors are stored in: bytes per element, which are floating point, the names
``--dtype`` takes and the safetensors spellings.  The one table of the tool (torch-free).
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["DTYPE_BYTES", "FLOAT_DTYPES", "STORAGE_DTYPES", "SAFETENSORS_DTYPES", "DTYPE_BITS",
           "numel", "tensor_bytes", "human_bytes"]

# Bytes per element (torch names without 'torch.', as TensorInfo spells them).
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
               "int16": 2, "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1,
               "float8_e5m2": 1, "uint16": 2, "uint32": 4, "uint64": 8, "complex64": 8,
               "complex128": 16}
# The floating-point dtypes a MobileOne's weights and statistics may be stored in.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
# ``--dtype`` names of the output precision -> dtype.
STORAGE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# safetensors dtype -> torch dtype name (the ones this tool may meet in a checkpoint).
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                      "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
# Every dtype the safetensors library knows, with its width in bits.
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
              "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16,
              "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64,
              "F64": 64, "I64": 64, "U64": 64}


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def tensor_bytes(dtype: str, shape: Sequence[int], unknown: int = 0) -> int:
    """Storage bytes of a tensor of ``dtype`` and ``shape``; ``unknown`` bytes per element for a
    dtype not in the table (0: what is not a tensor)."""
    return numel(shape) * DTYPE_BYTES.get(str(dtype), unknown)


def human_bytes(n: float) -> str:
    """Bytes in decimal units for people: 512 B, 4.8 KB, 19.3 MB, 44.1 TB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"
