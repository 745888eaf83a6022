"""Checkpoint files: sniff, load safely, unwrap, and write atomically.

Loading never runs code from the file: torch files go through ``torch.load(weights_only=True)`` and
safetensors through the safetensors library.  Torch is imported only inside the functions that need
tensors; :func:`sniff_format` and :func:`read_safetensors_header` work without it.
"""
from __future__ import annotations

import errno
import json
import os
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import BadInput
from .pickle_guard import refuse_code_globals
from .sanity import check_tensor_storage

__all__ = ["Checkpoint", "sniff_format", "read_safetensors_header", "load_checkpoint",
           "unwrap", "save_checkpoint", "check_destination", "WRAPPER_KEYS", "STRIP_PREFIXES"]

# Containers that hold the state dict, in the order they are preferred.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "net")
EMA_KEYS = ("ema_state_dict", "state_dict_ema", "model_ema", "ema")
# Prefixes that training frameworks add to every key (DataParallel/DDP, Lightning-style wrappers).
STRIP_PREFIXES = ("module.", "model.")
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                      "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                      "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2,
                      "U32": 4, "U64": 8}
_MAX_HEADER = 100 * 1024 * 1024


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
        if 2 <= n <= min(_MAX_HEADER, size - 8) and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+: torch's legacy (non-zip) format
        return "torch-legacy"
    raise BadInput(f"{path}: not a PyTorch or safetensors checkpoint (unrecognised file contents)")


def read_safetensors_header(path: str) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...]]],
                                                 Dict[str, str]]:
    """({key: (dtype, shape)}, metadata) of a safetensors file, without torch or the payload."""
    size = _check_readable(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise BadInput(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise BadInput(f"{path}: corrupt safetensors header (length {n} exceeds the file)")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"{path}: corrupt safetensors header ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise BadInput(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise BadInput(f"{path}: corrupt safetensors header (__metadata__ is not a JSON object)")
    out: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
    payload = size - 8 - n
    for key, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"].lower())
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BadInput(f"{path}: corrupt safetensors header (entry {key!r})") from None
        if not 0 <= start <= end <= payload:
            raise BadInput(f"{path}: corrupt safetensors header ({key!r} lies outside the file)")
        width = _SAFETENSORS_BYTES.get(info["dtype"])
        count = 1
        for d in shape:
            count *= d
        if min(shape, default=0) < 0 or (width is not None and count * width != end - start):
            raise BadInput(f"{path}: corrupt safetensors header ({key!r}: shape {list(shape)} "
                           f"of {dtype} does not fill its {end - start} bytes)")
        out[key] = (dtype, shape)
    return out, {str(k): str(v) for k, v in meta.items()}


def _torch_load(path: str, fmt: str, trust: bool = False) -> Tuple[Any, List[str]]:
    """(object, globals replaced by placeholders); only ``trust`` lets the pickle run code."""
    import pickle

    import torch

    try:
        if trust:
            return _trusted_load(path, fmt), []
        from .safeload import load_with_stubs

        # No mmap: each tensor then owns its memory, so a conversion that consumes the state
        # dict block by block gives memory back as it goes (issue 7: peak RSS near load+save).
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
        raise BadInput(f"{path}: not a loadable checkpoint ({_first_line(msg)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError,
            IndexError, TypeError, UnicodeDecodeError, struct.error, ImportError,
            AssertionError, OverflowError, NotImplementedError, RecursionError) as exc:
        # torch's unpickler reports a damaged legacy file with any of these (fuzz-found)
        reason = _first_line(str(exc)) or exc.__class__.__name__
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
                       f"({_first_line(str(exc)) or exc.__class__.__name__})") from None


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


def _first_line(msg: str) -> str:
    line = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
    return line[:200]


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
            raise BadInput(f"{path}: corrupt safetensors file ({_first_line(str(exc))})") from None
    else:
        # The CRC pass reads the file a second time; it runs beside the load (file reads and
        # zlib release the GIL), and its verdict is taken before anything from the load is used.
        integrity = _Background(check_zip_integrity, path) if fmt == "torch-zip" else None
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


class _Background:
    """Run ``fn(*args)`` in a thread; :meth:`result` joins it and re-raises its exception."""

    def __init__(self, fn, *args) -> None:
        import threading

        self._error: Optional[BaseException] = None

        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller's thread by result()
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def check_zip_integrity(path: str) -> None:
    """Every record of a torch zip file reads back intact, with its recorded CRC-32.

    ``torch.load`` checks no checksum: a bit flipped in transfer would load as a silently wrong
    weight.  Records saved without a CRC (``compute_crc32=False`` writes 0) are only opened.
    """
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:  # checks the record's local header
                    if info.CRC == 0:
                        continue
                    # The CRC is compared at the end of the record.  Small reads: a freed
                    # buffer above 128 KiB raises glibc's mmap threshold, and tensors loaded
                    # meanwhile then land on the heap, which keeps their pages after they are
                    # freed (+10 MiB peak RSS on an s4 conversion).
                    while fh.read(1 << 16):
                        pass
    except zipfile.BadZipFile as exc:
        msg = str(exc)
        if "not a zip file" in msg:
            msg = "no zip central directory: truncated or damaged"
        raise BadInput(f"{path}: corrupt checkpoint file ({msg})",
                       hint="download or copy the file again") from None
    except (OSError, EOFError, ValueError, NotImplementedError, zlib.error, struct.error,
            OverflowError, RuntimeError) as exc:
        reason = _first_line(str(exc)) or type(exc).__name__
        raise BadInput(f"{path}: corrupt checkpoint file ({reason})",
                       hint="download or copy the file again") from None


def check_destination(dst: str, *, force: bool = False, src: Optional[str] = None) -> None:
    """Refuse a DST that would lose data, before any work is done."""
    if src is not None and os.path.exists(dst) and os.path.samefile(src, dst):
        raise BadInput(f"{dst}: destination is the source file; choose another path")
    if os.path.isdir(dst):
        raise BadInput(f"{dst}: is a directory; give a file path ending in .pth or .safetensors")
    if os.path.exists(dst) and not force:
        raise BadInput(f"{dst}: already exists", hint="pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise BadInput(f"{dst}: directory {parent} does not exist")


def output_format(dst: str) -> str:
    return "safetensors" if dst.lower().endswith(".safetensors") else "torch"


def save_checkpoint(dst: str, state_dict: Mapping[str, Any], *, force: bool = False,
                    container: Optional[Dict[str, Any]] = None,
                    metadata: Optional[Dict[str, str]] = None) -> int:
    """Write ``state_dict`` to ``dst`` atomically (temp file in the same folder, then rename).

    ``.safetensors`` gets ``metadata`` in its header.  For torch files, ``container`` (e.g.
    mmpretrain's ``{'meta': ...}``) is written around the state dict as ``{'state_dict': ...}``;
    without it the file is a bare state dict.  Returns the size written in bytes.
    """
    check_destination(dst, force=force)
    parent = os.path.dirname(os.path.abspath(dst))
    _check_free_space(dst, parent, state_dict)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=parent)
        os.close(fd)
    except OSError as exc:
        raise BadInput(f"{dst}: cannot create a file in {parent} ({exc.strerror or exc}); "
                       f"nothing was written") from None
    try:
        if output_format(dst) == "safetensors":
            from safetensors.torch import save_file

            tensors = _safetensors_ready(state_dict, dst)
            save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        else:
            import torch

            obj: Any = dict(state_dict)
            if container is not None:
                obj = dict(container)
                obj["state_dict"] = dict(state_dict)
            torch.save(obj, tmp)
        _check_written(tmp, dst)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give DST the usual permissions
        os.replace(tmp, dst)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.errno == errno.ENOSPC:
            raise BadInput(f"{dst}: no space left on device; nothing was written") from None
        raise BadInput(f"{dst}: cannot write ({exc.strerror or exc}); nothing was written") from None
    except Exception as exc:
        _remove_quietly(tmp)
        if not _is_writer_error(exc):
            raise
        raise _write_failure(dst, parent, exc) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return os.path.getsize(dst)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _tensor_bytes(state_dict: Mapping[str, Any]) -> int:
    return sum(int(v.numel()) * v.element_size() for v in state_dict.values()
               if hasattr(v, "element_size") and hasattr(v, "numel"))


def _check_free_space(dst: str, parent: str, state_dict: Mapping[str, Any]) -> None:
    """Refuse before writing when the tensors cannot fit: a full disk is a clear error."""
    import shutil

    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return  # unknown: the write itself will tell
    need = _tensor_bytes(state_dict)
    if need > free:
        raise BadInput(f"{dst}: not enough free space ({need / 1e6:.1f} MB needed, "
                       f"{free / 1e6:.1f} MB free in {parent}); nothing was written")


def _safetensors_ready(state_dict: Mapping[str, Any], dst: str) -> Dict[str, Any]:
    """Tensors safetensors accepts: contiguous, no shared memory; other values are refused."""
    import torch

    out: Dict[str, Any] = {}
    seen = set()
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise BadInput(f"{dst}: {k} is not a tensor ({type(v).__name__}), and a .safetensors file holds "
                           f"only tensors", hint="write a .pth file instead")
        v = v.contiguous()
        ptr = (v.untyped_storage().data_ptr(), v.device.type) if v.numel() else None
        if ptr in seen:
            v = v.clone()  # tied or viewed tensors: safetensors stores each one separately
        elif ptr is not None:
            seen.add(ptr)
        out[k] = v
    return out


def _is_writer_error(exc: BaseException) -> bool:
    """torch's zip writer raises RuntimeError and safetensors SafetensorError for I/O failures."""
    return isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError"


def _write_failure(dst: str, parent: str, exc: BaseException) -> BadInput:
    import shutil

    msg = str(exc)
    full = "No space left" in msg or "os error 28" in msg
    if not full:
        try:
            full = shutil.disk_usage(parent).free < (1 << 20)
        except OSError:
            pass
    if full:
        return BadInput(f"{dst}: no space left on device; nothing was written")
    return BadInput(f"{dst}: cannot write ({_first_line(msg) or type(exc).__name__}); "
                    f"nothing was written")


def _check_written(tmp: str, dst: str) -> None:
    """Read back the structure of the file just written: a silently short write is refused."""
    import zipfile

    try:
        if sniff_format(tmp) == "safetensors":
            read_safetensors_header(tmp)  # every tensor's bytes lie inside the file
        else:
            with zipfile.ZipFile(tmp) as zf:  # the central directory is the last thing written
                zf.infolist()
    except (BadInput, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = exc.message if isinstance(exc, BadInput) else str(exc)
        raise OSError(errno.EIO, f"the written file does not read back: "
                                 f"{reason.replace(tmp, 'temp file')}") from None
