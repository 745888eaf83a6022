"""Tensor values as numpy arrays, without torch where the file allows it.

The health checks (``check.health``) compute value statistics with numpy, so that a
``.safetensors`` file can be examined without importing torch: its payload is mapped read-only
at the offsets of its (validated) header.  Torch tensors from a loaded pickle are viewed as
numpy arrays without a copy where numpy has the dtype; bfloat16 (which numpy lacks) is widened
to float32, exactly.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from ..rules.dtypes import DTYPE_BYTES, tensor_bytes
from .header import Layout

__all__ = ["safetensors_arrays", "as_array", "ArrayView", "tensor_bytes", "DTYPE_BYTES"]

# safetensors dtype -> numpy dtype it is read as (little-endian, as the format stores it).
_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?", "U16": "<u2", "U32": "<u4",
          "U64": "<u8"}


def _widen_bf16(raw: Any) -> Any:
    """bfloat16 bit patterns (uint16) -> the same values in float32 (exact: the top half)."""
    import numpy as np

    return (raw.astype(np.uint32) << 16).view(np.float32)


def safetensors_arrays(path: str, layout: Optional[Layout] = None
                       ) -> Tuple[Dict[str, Any], List[str]]:
    """({key: numpy array}, keys whose dtype numpy cannot hold) of a safetensors file.

    The payload is memory-mapped, not read: arrays are read-only views (bfloat16 is widened to
    float32 in a copy).  ``layout``: the file's header as :func:`read.read_safetensors_layout`
    checked it (read here when not given; a large header is parsed once).
    """
    import numpy as np

    from .read import read_safetensors_layout

    if layout is None:
        layout = read_safetensors_layout(path)  # every offset and size checked against the file
    if os.path.getsize(path) <= layout.start:  # nothing but empty tensors: nothing to map
        payload = np.zeros(0, dtype=np.uint8)
    else:
        payload = np.memmap(path, dtype=np.uint8, mode="r", offset=layout.start)
    out: Dict[str, Any] = {}
    skipped: List[str] = []
    for key, (dtype, shape, lo, hi) in layout.entries.items():
        kind = _NUMPY.get(dtype)
        if kind is None:
            skipped.append(key)
            continue
        arr = payload[lo:hi].view(kind).reshape(shape)
        out[key] = _widen_bf16(arr) if dtype == "BF16" else arr
    return out, skipped


def as_array(value: Any) -> Any:
    """A numpy view of a torch tensor (or the array itself); None for what is not a tensor.

    bfloat16 and float8 tensors are widened to float32 (exact)."""
    if hasattr(value, "__array_interface__"):
        return value
    if type(value).__module__.split(".")[0] != "torch" or not hasattr(value, "numpy"):
        return None
    name = str(value.dtype).replace("torch.", "")
    t = value.detach()
    if name == "bfloat16" or name.startswith("float8"):
        t = t.float()
    try:
        return t.numpy()
    except (TypeError, RuntimeError):  # complex/quantized/unsigned kinds numpy cannot view
        return None


class ArrayView(Mapping):
    """A read-only mapping {key: numpy array} over a state dict of torch tensors, converted on
    access (no copy except for bfloat16/float8); entries that are not tensors read as None."""

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        self._sd = state_dict

    def __getitem__(self, key: str) -> Any:
        return as_array(self._sd[key])

    def __contains__(self, key: object) -> bool:
        return key in self._sd

    def __iter__(self) -> Iterator[str]:
        return iter(self._sd)

    def __len__(self) -> int:
        return len(self._sd)
