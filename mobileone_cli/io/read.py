"""Checkpoint files: sniff, load safely, unwrap.

Loading never runs code from the file: torch files go through ``torch.load(weights_only=True)`` and
safetensors through the safetensors library.  Work is bounded by the file: a torch zip whose
directory declares compressed records or records larger than the file is refused before anything
is inflated.  Torch is imported only inside the functions that need tensors;
:func:`sniff_format` and :func:`read_safetensors_header` work without it.
"""
from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import BadInput, first_line
from .header import MAX_HEADER, SAFETENSORS_DTYPES, read_header
from .pickle_guard import refuse_code_globals
from .sanity import check_tensor_storage

__all__ = ["Checkpoint", "sniff_format", "read_safetensors_header", "load_checkpoint",
           "unwrap", "strip_prefix", "loading_notes", "Listing", "list_tensors", "WRAPPER_KEYS",
           "EMA_KEYS", "STRIP_PREFIXES", "SAFETENSORS_DTYPES"]

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


def _torch_load(path: str, fmt: str, trust: bool = False) -> Tuple[Any, List[str]]:
    """(object, globals replaced by placeholders); only ``trust`` lets the pickle run code."""
    import pickle


    try:
        if trust:
            return _trusted_load(path, fmt), []
        from .safeload import load_with_stubs

        # No mmap: each tensor then owns its memory, so a conversion that consumes the state
        # dict block by block gives memory back as it goes (peak RSS near load+save).
        obj, stubbed = load_with_stubs(path)
        refuse_code_globals(stubbed, path)  # placeholders are inert, but such a file is an attack
        return obj, stubbed
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        glob = _refused_global(msg)
        if glob:
            raise BadInput(f"{path}: refused to load: the file needs the Python global {glob}, "
                           f"which weights-only loading does not allow",
                           hint="if you trust this file, pass --trust-file") from None
        detail = _weights_only_detail(msg)
        if detail:
            raise BadInput(f"{path}: weights-only loading failed, even with placeholders for "
                           f"foreign objects ({detail})",
                           hint="if you trust this file, pass --trust-file") from None
        raise BadInput(f"{path}: not a loadable checkpoint ({first_line(msg)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError,
            IndexError, TypeError, UnicodeDecodeError, struct.error, ImportError,
            AssertionError, OverflowError, NotImplementedError, RecursionError) as exc:
        # torch's unpickler reports a damaged legacy file with any of these
        reason = first_line(str(exc)) or exc.__class__.__name__
        if "zip archive" in reason or "central directory" in reason or isinstance(exc, EOFError):
            reason = "truncated or corrupt file: " + reason
        raise BadInput(f"{path}: cannot load checkpoint ({reason})") from None


def _trusted_load(path: str, fmt: str) -> Any:
    """--trust-file: plain unpickling, which may run code from the file (the user opted in)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, ImportError, AttributeError) as exc:
        raise BadInput(f"{path}: cannot load checkpoint even with --trust-file "
                       f"({first_line(str(exc)) or exc.__class__.__name__})") from None


def _weights_only_detail(msg: str) -> Optional[str]:
    """The line of torch's weights-only refusal that says what was refused."""
    if "Weights only load failed" not in msg:
        return None
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("WeightsUnpickler error"):
            rest = ln.split(":", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return rest[:200]
    return None


def _refused_global(msg: str) -> Optional[str]:
    import re

    m = re.search(r"(?:Unsupported global|GLOBAL)\s*:?\s*(?:GLOBAL\s+)?([A-Za-z_][\w.]*)", msg)
    if not m:
        return None
    return m.group(1) if "." in m.group(1) else f"builtins.{m.group(1)}"  # torch drops builtins.


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def unwrap(obj: Any, *, ema: bool = False, path: str = "checkpoint"
           ) -> Tuple[Dict[str, Any], Optional[str], Dict[str, Any]]:
    """(state_dict, wrapper key or None, other top-level entries) of a loaded object."""
    if not isinstance(obj, Mapping):
        raise BadInput(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if ema:
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


def load_checkpoint(path: str, *, ema: bool = False, trust: bool = False) -> Checkpoint:
    """Load any supported checkpoint file safely and unwrap it to a flat state dict."""
    path = os.fspath(path)
    fmt = sniff_format(path)
    metadata: Dict[str, str] = {}
    stubbed: List[str] = []
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
    else:
        from .integrity import Background, check_zip_directory, check_zip_integrity

        if fmt == "torch-zip":
            check_zip_directory(path)
        # The CRC pass reads the file a second time; it runs beside the load (file reads and
        # zlib release the GIL), and its verdict is taken before anything from the load is used.
        integrity = Background(check_zip_integrity, path) if fmt == "torch-zip" else None
        try:
            with warnings.catch_warnings():  # torch's deprecation chatter is not for our users
                warnings.simplefilter("ignore")
                obj, stubbed = _torch_load(path, fmt, trust)
        finally:
            if integrity is not None:
                integrity.result()  # a damaged file is reported as such, not as a load error
    sd, wrapper, extras = unwrap(obj, ema=ema, path=path)
    if not all(isinstance(k, str) for k in sd):
        raise BadInput(f"{path}: state dict keys must be strings")
    sd, stripped = strip_prefix(sd)
    check_tensor_storage(sd, path)
    return Checkpoint(path=path, file_format=fmt, state_dict=sd, wrapper=wrapper,
                      stripped_prefix=stripped, extras=extras, metadata=metadata,
                      stubbed=stubbed, trusted=trust and fmt != "safetensors")


def loading_notes(ck: Checkpoint) -> List[str]:
    """What a user should know about how ``ck`` was read: container, prefix, placeholders, trust."""
    notes = []
    if ck.wrapper:
        notes.append(f"state dict taken from the {ck.wrapper!r} entry")
    if ck.stripped_prefix:
        notes.append(f"stripped key prefix {ck.stripped_prefix!r}")
    if ck.stubbed:
        names = ", ".join(ck.stubbed[:4]) + (f" and {len(ck.stubbed) - 4} more"
                                             if len(ck.stubbed) > 4 else "")
        notes.append(f"loaded without running code: {len(ck.stubbed)} foreign global(s) read as "
                     f"inert placeholders ({names})")
    if ck.trusted:
        notes.append("--trust-file: the file was unpickled with weights_only=False")
    return notes


@dataclass
class Listing:
    """What a checkpoint file holds, as ``{key: (dtype, shape)}`` plus how it was found.

    A ``.safetensors`` file is listed from its JSON header alone (no torch, no payload read);
    a torch file is loaded safely and ``checkpoint`` keeps it for callers that need tensors.
    """

    path: str
    file_format: str
    tensors: Dict[str, Tuple[str, Tuple[int, ...]]]
    metadata: Dict[str, str] = field(default_factory=dict)
    checkpoint: Optional[Checkpoint] = None
    stripped_prefix: str = ""

    @property
    def notes(self) -> List[str]:
        if self.checkpoint is not None:
            return loading_notes(self.checkpoint)
        return [f"stripped key prefix {self.stripped_prefix!r}"] if self.stripped_prefix else []


def list_tensors(path: str, *, ema: bool = False, trust: bool = False) -> Listing:
    """The tensor listing of ``path`` (see :class:`Listing`)."""
    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        if ema:
            raise BadInput(f"{path}: --ema given but a safetensors file holds one flat state dict")
        header, metadata = read_safetensors_header(path)
        tensors, stripped = strip_prefix(dict(header))
        return Listing(path, fmt, tensors, metadata, stripped_prefix=stripped)
    from .detect import tensor_info

    ck = load_checkpoint(path, ema=ema, trust=trust)
    return Listing(path, fmt, tensor_info(ck.state_dict), ck.metadata, ck,
                   stripped_prefix=ck.stripped_prefix)
