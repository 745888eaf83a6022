"""Checkpoint files: sniff, load safely, unwrap.

Loading never runs code from the file: torch files go through ``torch.load(weights_only=True)`` and
safetensors through the safetensors library.  Work is bounded by the file: a torch zip whose
directory declares compressed records or records larger than the file is refused before anything
is inflated, and tensors that claim more than the file stores (broadcast or overlapping views,
:mod:`.bounds`) before anything is computed from them.  Torch is imported only inside the
functions that need tensors; :func:`sniff_format` and :func:`read_safetensors_header` work
without it.
"""
from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import BadInput, first_line
from .bounds import check_claims, tensors_in
from .header import MAX_HEADER, SAFETENSORS_DTYPES, Layout, read_header, read_layout
from .pickle_guard import load_torch
from .sanity import check_tensor_storage
from .trust import TrustList, open_trusted

__all__ = ["Checkpoint", "sniff_format", "read_safetensors_header", "read_safetensors_layout",
           "load_checkpoint",
           "load_object", "as_checkpoint", "unwrap", "swapped_ema", "strip_prefix",
           "loading_notes", "WRAPPER_KEYS", "EMA_KEYS", "STRIP_PREFIXES", "SAFETENSORS_DTYPES"]

# Containers that hold the state dict, in the order they are preferred.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "net")
EMA_KEYS = ("ema_state_dict", "state_dict_ema", "model_ema", "ema")
# Prefixes that training frameworks add to every key (DataParallel/DDP, Lightning-style wrappers).
STRIP_PREFIXES = ("module.", "model.")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the unwrapped tensors plus how they were found."""

    path: str
    file_format: str  # 'torch-zip', 'torch-legacy' or 'safetensors'
    state_dict: Dict[str, Any]
    wrapper: Optional[str] = None  # key of the container the state dict came from
    stripped_prefix: str = ""  # e.g. 'module.'
    extras: Dict[str, Any] = field(default_factory=dict)  # other top-level entries (meta, ...)
    metadata: Dict[str, str] = field(default_factory=dict)  # safetensors header metadata
    stubbed: List[str] = field(default_factory=list)  # foreign globals loaded as placeholders
    trusted: bool = False  # loaded with weights_only=False (--trust-file)
    ema_note: str = ""  # where the EMA weights of this file are, when that is not obvious


def _check_readable(path: str) -> int:
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such file")
    if os.path.isdir(path):
        raise BadInput(f"{path}: is a directory, not a checkpoint file")
    if not os.path.isfile(path):  # a FIFO would block the open below; a device never ends
        raise BadInput(f"{path}: not a regular file (a pipe, socket or device)")
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise BadInput(f"{path}: empty file")
    return size


def sniff_format(path: str) -> str:
    """'torch-zip', 'torch-legacy' or 'safetensors', from the bytes, not the extension."""
    size = _check_readable(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= min(MAX_HEADER, size - 8) and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+: torch's legacy (non-zip) format
        return "torch-legacy"
    raise BadInput(f"{path}: not a PyTorch or safetensors checkpoint (unrecognised file contents)")


def read_safetensors_header(path: str) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...]]],
                                                 Dict[str, str]]:
    """({key: (dtype, shape)}, metadata) of a safetensors file, without torch or the payload:
    the one header parser (:mod:`.header`), so inspect and convert refuse the same files."""
    return read_header(path, _check_readable(path))


def read_safetensors_layout(path: str) -> Layout:
    """The checked header of a safetensors file with each tensor's bytes (see :mod:`.header`)."""
    return read_layout(path, _check_readable(path))


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def swapped_ema(obj: Any) -> bool:
    """True for a file of mmengine's ``EMAHook``.

    Before saving, EMAHook SWAPS the two copies of the weights: ``state_dict`` holds the EMA
    weights (what mmpretrain publishes and evaluates) and ``ema_state_dict`` holds ``steps``
    plus the raw training weights under ``module.``-prefixed keys.
    """
    ema = obj.get("ema_state_dict") if isinstance(obj, Mapping) else None
    return (isinstance(ema, Mapping) and "steps" in ema
            and isinstance(obj.get("state_dict"), Mapping)
            and all(k == "steps" or str(k).startswith("module.") for k in ema))


def unwrap(obj: Any, *, ema: bool = False, path: str = "checkpoint"
           ) -> Tuple[Dict[str, Any], Optional[str], Dict[str, Any]]:
    """(state_dict, wrapper key or None, other top-level entries) of a loaded object.

    ``ema`` asks for the exponential-moving-average weights: the first of :data:`EMA_KEYS`,
    except in an mmengine EMAHook file, where they are ``state_dict`` (see :func:`swapped_ema`).
    """
    if not isinstance(obj, Mapping):
        raise BadInput(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if ema and not swapped_ema(obj):
        for key in EMA_KEYS:
            if isinstance(obj.get(key), Mapping):
                return dict(obj[key]), key, {k: v for k, v in obj.items() if k != key}
        raise BadInput(f"{path}: --ema given but the file has no EMA weights "
                       f"(looked for {', '.join(EMA_KEYS)})")
    if obj and all(_is_tensor(v) for v in obj.values()):
        return dict(obj), None, {}
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and any(_is_tensor(v) for v in inner.values()):
            return dict(inner), key, {k: v for k, v in obj.items() if k != key}
    tensors = {k: v for k, v in obj.items() if _is_tensor(v)}
    if tensors:
        return tensors, None, {k: v for k, v in obj.items() if not _is_tensor(v)}
    raise BadInput(f"{path}: no tensors found (top-level keys: "
                   f"{', '.join(map(str, list(obj)[:8]))})")


def strip_prefix(sd: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """Remove a ``module.``/``model.`` prefix carried by every key (DDP, Lightning)."""
    stripped = ""
    while sd:
        for p in STRIP_PREFIXES:
            if all(isinstance(k, str) and k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                stripped += p
                break
        else:
            break
    return sd, stripped


def load_object(path: str, *, trust: Union[bool, TrustList] = False
                ) -> Tuple[str, Any, Dict[str, str], List[str], bool]:
    """(format, the file's top-level object, safetensors metadata, placeholder globals, whether
    it was unpickled as a trusted file), loaded safely; nothing is unwrapped (see
    :func:`load_checkpoint`).  ``trust``: True (every file), or the files the user named."""
    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        read_safetensors_header(path)  # clear errors for corrupt headers before the library's
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            obj: Any = load_file(path, device="cpu")
            with safe_open(path, framework="pt") as fh:
                metadata = dict(fh.metadata() or {})
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"{path}: corrupt safetensors file ({first_line(str(exc))})") from None
        return fmt, obj, metadata, [], False
    from .integrity import Background, check_zip_directory, check_zip_integrity

    if fmt == "torch-zip":
        check_zip_directory(path)
    # The CRC pass reads the file a second time; it runs beside the load (file reads and
    # zlib release the GIL), and its verdict is taken before anything from the load is used.
    integrity = Background(check_zip_integrity, path) if fmt == "torch-zip" else None
    trusted = None
    try:
        trusted = open_trusted(path, trust)  # decided before anything is unpickled
        with warnings.catch_warnings():  # torch's deprecation chatter is not for our users
            warnings.simplefilter("ignore")
            obj, stubbed = load_torch(path, trusted=trusted)
    finally:
        if hasattr(trusted, "close"):
            trusted.close()
        if integrity is not None:
            integrity.result()  # a damaged file is reported as such, not as a load error
    check_claims(tensors_in(obj), path)  # before anything computes on a view
    return fmt, obj, {}, stubbed, trusted is not None


def load_checkpoint(path: str, *, ema: bool = False,
                    trust: Union[bool, TrustList] = False) -> Checkpoint:
    """Load any supported checkpoint file safely and unwrap it to a flat state dict.
    ``trust``: True unpickles in full (can run code); a TrustList only the files it names."""
    path = os.fspath(path)
    fmt, obj, metadata, stubbed, trusted = load_object(path, trust=trust)
    return as_checkpoint(path, fmt, obj, metadata, stubbed, ema=ema, trust=trusted)


def as_checkpoint(path: str, fmt: str, obj: Any, metadata: Dict[str, str], stubbed: List[str],
                  *, ema: bool = False, trust: bool = False) -> Checkpoint:
    """The :class:`Checkpoint` of a loaded top-level object (BadInput if it holds no state
    dict)."""
    sd, wrapper, extras = unwrap(obj, ema=ema, path=path)
    ema_note = ""
    if wrapper == "state_dict" and swapped_ema(obj):
        ema_note = ("mmengine EMAHook file: 'state_dict' holds the EMA weights, 'ema_state_dict' "
                    "the raw ones")
    if not all(isinstance(k, str) for k in sd):
        raise BadInput(f"{path}: state dict keys must be strings")
    sd, stripped = strip_prefix(sd)
    check_tensor_storage(sd, path)
    check_claims(sd.items(), path)
    return Checkpoint(path=path, file_format=fmt, state_dict=sd, wrapper=wrapper,
                      stripped_prefix=stripped, extras=extras, metadata=metadata,
                      stubbed=stubbed, trusted=trust and fmt != "safetensors",
                      ema_note=ema_note)


def loading_notes(ck: Checkpoint) -> List[str]:
    """What a user should know about how ``ck`` was read: container, prefix, placeholders, trust."""
    notes = []
    if ck.wrapper:
        notes.append(f"state dict taken from the {ck.wrapper!r} entry")
    if ck.ema_note:
        notes.append(ck.ema_note)
    if ck.stripped_prefix:
        notes.append(f"stripped key prefix {ck.stripped_prefix!r}")
    if ck.stubbed:
        names = ", ".join(ck.stubbed[:4]) + (f" and {len(ck.stubbed) - 4} more"
                                             if len(ck.stubbed) > 4 else "")
        notes.append(f"loaded without running code: {len(ck.stubbed)} foreign global(s) read as "
                     f"inert placeholders ({names})")
    if ck.trusted:
        notes.append("trusted file (--trust-file): unpickled with weights_only=False")
    return notes
