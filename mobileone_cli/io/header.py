"""The JSON header of a ``.safetensors`` file, read and checked without torch or the payload
(:func:`sort_metadata` puts the metadata of a file just written in a stable order).

This is the one parser of that header: ``inspect`` lists a file from it alone and ``convert``
runs it before the safetensors library, so both refuse the same files.  It accepts what the
safetensors library (0.4 .. 0.8) accepts and refuses the rest with a one-line reason, with work
bounded by the header's size:

* the header is a JSON object of at most ``MAX_HEADER`` bytes; nesting that exhausts the
  parser's stack, ``NaN``/``Infinity``, and integers of more than 20 digits (above 2**64) are
  refused while parsing, before any such number is converted;
* each entry has a known ``dtype`` (text), a ``shape`` of non-negative integers and
  ``data_offsets`` of exactly two integers; its bytes are exactly what its shape needs;
* the entries tile the payload: sorted by offset, each starts where the previous one ended, and
  the last one ends at the end of the file (the library's "invalid offset" and "incomplete
  metadata" rules);
* ``__metadata__`` is absent, null, or an object of text values;
* at most ``MAX_TENSORS`` entries (rules/limits.py): beyond that, reading, detecting and
  loading cost seconds per hundred thousand entries for no MobileOne.
"""
from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, NamedTuple, Tuple

from ..errors import BadInput
from ..rules.dtypes import DTYPE_BITS, SAFETENSORS_DTYPES
from ..rules.limits import MAX_HEADER, MAX_INT_DIGITS, MAX_TENSORS

__all__ = ["read_header", "read_layout", "sort_metadata", "Layout", "SAFETENSORS_DTYPES",
           "DTYPE_BITS", "MAX_HEADER"]


class Layout(NamedTuple):
    """A checked header: {key: (safetensors dtype, shape, first byte, end byte)} with bytes
    counted from ``start``, where the payload begins in the file; and the metadata."""
    entries: Dict[str, Tuple[str, Tuple[int, ...], int, int]]
    metadata: Dict[str, str]
    start: int

    def tensors(self) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
        """{key: (dtype, shape)}, the dtype by torch's name where it has one."""
        return {k: (SAFETENSORS_DTYPES.get(d, d.lower()), s)
                for k, (d, s, _, _) in self.entries.items()}


class _Refused(ValueError):
    """Raised from inside the JSON parser: the header breaks a rule before it is fully read."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text)} digits")
    return int(text)


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _name(key: object, width: int = 80) -> str:
    """A key as it may appear in a one-line message: repr, shortened."""
    text = repr(key)
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_header(path: str, size: int) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...]]],
                                               Dict[str, str]]:
    """({key: (dtype, shape)}, metadata) of the safetensors file ``path`` of ``size`` bytes."""
    layout = read_layout(path, size)
    return layout.tensors(), layout.metadata


def read_layout(path: str, size: int) -> Layout:
    """The checked :class:`Layout` of the safetensors file ``path`` of ``size`` bytes: what
    reading the values needs, from one parse of a header that may be 100 MB."""
    def corrupt(why: str) -> BadInput:
        return BadInput(f"{path}: corrupt safetensors header ({why})")

    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise BadInput(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER, size - 8):
            raise corrupt(f"length {n} exceeds the file")
        data = fh.read(n)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise corrupt("not UTF-8") from None
    del data  # a header may be 100 MB: keep one copy
    try:
        header = json.loads(text, parse_int=_int, parse_constant=_constant)
    except _Refused as exc:
        raise corrupt(str(exc)) from None
    except RecursionError:
        raise corrupt("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise corrupt(f"invalid JSON at byte {exc.pos}: {exc.msg}") from None
    except ValueError as exc:
        raise corrupt(exc.__class__.__name__) from None
    if not isinstance(header, dict):
        raise corrupt("not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise corrupt("__metadata__ is not a JSON object of text values")
    if len(header) > MAX_TENSORS:
        raise BadInput(f"{path}: {len(header):,} tensors in the safetensors header; a checkpoint "
                       f"holds at most {MAX_TENSORS:,}")
    payload = size - 8 - n
    out: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {}
    spans: List[Tuple[int, int, str]] = []
    for key, info in header.items():
        if not isinstance(info, dict):
            raise corrupt(f"entry {_name(key)} is not a JSON object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or not isinstance(shape, list) \
                or not isinstance(offsets, list):
            raise corrupt(f"entry {_name(key)}: dtype, shape and data_offsets are required")
        if dtype not in DTYPE_BITS:
            raise corrupt(f"entry {_name(key)}: unknown dtype {_name(dtype, 20)}")
        if len(offsets) != 2 or not all(_is_count(x) for x in offsets):
            raise corrupt(f"entry {_name(key)}: data_offsets must be two non-negative integers")
        start, end = offsets
        if not start <= end <= payload:
            raise corrupt(f"{_name(key)} lies outside the file")
        count = 1
        for d in shape:
            if not _is_count(d):
                raise corrupt(f"{_name(key)}: shape {_name(shape, 40)} of {dtype} does not fill "
                              f"its {end - start} bytes (dimensions are non-negative integers)")
            if d >= 1 << 63:  # torch sizes are int64, an empty tensor's too
                raise corrupt(f"{_name(key)}: shape {_name(shape, 40)} has a dimension of 2^63 "
                              f"or more, which no tensor can have")
            count *= d
        if count * DTYPE_BITS[dtype] != (end - start) * 8:
            raise corrupt(f"{_name(key)}: shape {_name(shape, 40)} of {dtype} does not fill its "
                          f"{end - start} bytes")
        out[key] = (dtype, tuple(shape), start, end)
        spans.append((start, end, key))
    at = 0
    for start, end, key in sorted(spans):
        if start != at:
            raise corrupt(f"{_name(key)} starts at byte {start}, not where the previous tensor "
                          f"ends ({at})")
        at = end
    if at != payload:
        raise corrupt(f"the tensors cover {at} of the {payload} payload bytes")
    return Layout(out, meta, 8 + n)


def sort_metadata(path: str) -> None:
    """Put the ``__metadata__`` keys of a safetensors header in sorted order, in place.

    safetensors writes them in its hash map's order, which changes from run to run; sorted, two
    identical conversions give identical bytes.  Only the order changes, so the header keeps
    its length and the tensor data stays where it is."""
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(n)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not meta:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        ordered = {"__metadata__": header.pop("__metadata__"), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # never expected: the header would need rewriting around the data
            return
        fh.seek(8)
        fh.write(text + b" " * (n - len(text)))
