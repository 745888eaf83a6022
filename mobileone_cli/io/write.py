"""Every file the tool writes goes through :func:`atomic_write`: a temp file beside DST, checked,
then published in one step, so DST is either untouched or complete.

* Without ``force`` the publish is exclusive (a hard link, or ``renameat2(RENAME_NOREPLACE)``): of
  two runs racing for the same new DST one wins and the other fails with exit 2; nothing is lost.
* With ``force`` only a regular file (or a link, which is replaced, never written through) may be
  replaced: a device, FIFO, socket or directory never is.
* Temp files are named ``.mobileone-tmp-<pid>-<random>`` (short, so any legal DST name works) and
  removed on every catchable exit; a later run names stale ones left by a killed process
  (:mod:`.leftovers`).
* Each publish is recorded (:mod:`.published`), so an interrupt can say what was written.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional

from ..errors import BadInput
from . import interrupt
from .header import sort_metadata
from .leftovers import TEMP_PREFIX
from .published import note_published
from .text import special_kind

__all__ = ["atomic_write", "save_checkpoint", "check_destination", "check_checkpoint_name",
           "output_format", "CHECKPOINT_EXTENSIONS"]

CHECKPOINT_EXTENSIONS = (".pth.tar", ".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def output_format(dst: str) -> str:
    return "safetensors" if os.fspath(dst).lower().endswith(".safetensors") else "torch"


def check_checkpoint_name(dst: str) -> None:
    """A checkpoint DST must end in a checkpoint extension; ``.onnx`` & co. belong to export."""
    low = os.fspath(dst).lower()
    if low.endswith(CHECKPOINT_EXTENSIONS):
        return
    ext = os.path.splitext(low)[1]
    if ext in (".onnx", ".pte", ".tflite", ".mlpackage"):
        raise BadInput(f"{dst}: convert writes checkpoints; a {ext} file is an export target",
                       hint=f"mobileone export SRC {dst}")
    raise BadInput(f"{dst}: unknown checkpoint extension {ext or '(none)'!r}; use one of "
                   f"{', '.join(CHECKPOINT_EXTENSIONS)}")


def _lstat(path: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"{path}: cannot look at the destination ({exc.strerror or exc})") from None


def is_package(path: str) -> bool:
    """A folder package (.mlpackage) with its manifest: what a package export may replace."""
    return os.path.isfile(os.path.join(path, "Manifest.json"))


def check_destination(dst: str, *, force: bool = False, src: Optional[str] = None,
                      what: str = "file path", package: bool = False) -> None:
    """Refuse, before any work, a DST that cannot or must not be written.  ``package``: DST is
    a folder package (.mlpackage); an existing package folder counts as an existing DST."""
    dst = os.fspath(dst)
    if package and os.path.isdir(dst) and not os.path.islink(dst):
        if not is_package(dst):
            raise BadInput(f"{dst}: is a directory that is not a package; the tool only ever "
                           f"replaces packages it could have written")
        if not force:
            raise BadInput(f"{dst}: already exists",
                           hint="pass --force (force=True in Python) to overwrite it")
        return
    if not dst.strip():
        raise BadInput("DST is empty; give a file path")
    if dst.endswith(("/", os.sep)):
        where = "is a directory" if os.path.isdir(dst) else "does not exist"
        raise BadInput(f"{dst}: {where}; DST must be a {what} (several SRCs or a SRC folder "
                       f"convert into an existing folder)")
    st = _lstat(dst)
    if st is not None:
        if src is not None and os.path.exists(dst) and os.path.exists(src) \
                and os.path.samefile(src, dst):
            raise BadInput(f"{dst}: destination is the source file; choose another path")
        target = os.stat(dst) if stat.S_ISLNK(st.st_mode) and os.path.exists(dst) else st
        if not (stat.S_ISREG(target.st_mode) or stat.S_ISLNK(target.st_mode)):
            raise BadInput(f"{dst}: is {special_kind(target.st_mode)}; the tool only ever replaces "
                           f"regular files")
        if not force:
            dangling = " (a dangling symbolic link)" if not os.path.exists(dst) else ""
            raise BadInput(f"{dst}: already exists{dangling}",
                           hint="pass --force (force=True in Python) to overwrite it")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        what_parent = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise BadInput(f"{dst}: the folder {parent} {what_parent}",
                       hint="create it first (mkdir -p)")
    effective = os.access in os.supports_effective_ids
    if not os.access(parent, os.W_OK | os.X_OK, effective_ids=effective):
        raise BadInput(f"{dst}: cannot create a file in {parent} (not writable: permission "
                       f"denied or a read-only file system)")


def _publish(tmp: str, dst: str, force: bool) -> None:
    """Move ``tmp`` to ``dst``: replacing (force) or exclusively (no file may appear meanwhile)."""
    if force:
        st = _lstat(dst)
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise BadInput(f"{dst}: is {special_kind(st.st_mode)}; the tool only ever replaces "
                           f"regular files; nothing was written")
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # fails if ANY entry named dst exists, a dangling link included
    except FileExistsError:
        raise BadInput(f"{dst}: already exists (written meanwhile by another process?); "
                       f"nothing was written",
                       hint="pass --force (force=True in Python) to overwrite it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                             errno.ENOSYS):
            raise
        _rename_noreplace(tmp, dst)  # a file system without hard links
        return
    os.unlink(tmp)


def _rename_noreplace(tmp: str, dst: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        at_fdcwd, noreplace = -100, 1
        if fn(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise BadInput(f"{dst}: already exists (written meanwhile by another process?); "
                           f"nothing was written")
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
    # Last resort: claim the name exclusively, then move the finished file onto the claim.
    fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    os.close(fd)
    os.replace(tmp, dst)


def atomic_write(dst: str, write: Callable[[str], None], *, force: bool = False,
                 check: Optional[Callable[[str], None]] = None, need_bytes: int = 0) -> int:
    """Write ``dst`` through ``write(tmp_path)``, ``check(tmp_path)`` it, then publish it.

    Errors become one-line BadInput messages that say nothing was written; any exception leaves
    no temp file behind.  Returns the size of DST in bytes.
    """
    dst = os.fspath(dst)
    check_destination(dst, force=force)
    parent = os.path.dirname(os.path.abspath(dst))
    if need_bytes:
        _check_free_space(dst, parent, need_bytes)
    try:
        with interrupt.lock():  # an interrupt removes it, or comes before it exists
            fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".tmp",
                                       dir=parent)
            interrupt.register_temp(tmp)
        os.close(fd)
    except OSError as exc:
        raise BadInput(f"{dst}: cannot create a file in {parent} ({exc.strerror or exc}); "
                       f"nothing was written") from None
    try:
        write(tmp)
        if check is not None:
            check(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give DST the usual permissions
        with interrupt.lock():  # published and recorded as one step, or not at all
            _publish(tmp, dst, force)
            note_published(dst)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise BadInput(f"{dst}: no space left on device; nothing was written") from None
        raise BadInput(f"{dst}: cannot write ({exc.strerror or exc}); nothing was "
                       f"written") from None
    except BaseException as exc:
        _remove_quietly(tmp)
        if interrupt.wraps_interrupt(exc):
            raise KeyboardInterrupt from None
        if isinstance(exc, Exception) and _is_writer_error(exc):
            raise _write_failure(dst, parent, exc) from None
        raise
    finally:
        interrupt.forget_temp(tmp)
    return os.path.getsize(dst)


def save_checkpoint(dst: str, state_dict: Mapping[str, Any], *, force: bool = False,
                    container: Optional[Dict[str, Any]] = None,
                    metadata: Optional[Dict[str, str]] = None) -> int:
    """Write ``state_dict`` to ``dst`` atomically, as ``.safetensors`` or a torch file.

    ``.safetensors`` gets ``metadata`` in its header.  For torch files, ``container`` (e.g.
    mmpretrain's ``{'meta': ...}``) is written around the state dict as ``{'state_dict': ...}``;
    without it the file is a bare state dict.  Tensors that are views into a larger storage are
    copied first, so the file holds only its own numbers.  Returns the size written in bytes.
    """
    dst = os.fspath(dst)
    tensors = _own_storage(state_dict)
    if output_format(dst) == "safetensors":
        def write(tmp: str) -> None:
            from safetensors.torch import save_file

            save_file(_safetensors_ready(tensors, dst), tmp,
                      metadata={str(k): str(v) for k, v in (metadata or {}).items()})
            sort_metadata(tmp)
    else:
        def write(tmp: str) -> None:
            import torch

            obj: Any = tensors
            if container is not None:
                obj = dict(container)
                obj["state_dict"] = tensors
            with open(tmp, "wb") as fh:  # a file object: the zip's inner root is 'archive/'
                torch.save(obj, fh)
    return atomic_write(dst, write, force=force, check=lambda tmp: _check_written(tmp, dst),
                        need_bytes=_tensor_bytes(tensors))


def _own_storage(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """The state dict with every tensor that views a larger storage replaced by a copy (torch
    saves whole storages: a view into a train file's flat buffer would carry all of it)."""
    out: Dict[str, Any] = {}
    for k, v in state_dict.items():
        if hasattr(v, "untyped_storage") and v.numel() and \
                v.untyped_storage().nbytes() > v.numel() * v.element_size():
            v = v.clone()
        out[k] = v
    return out


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _tensor_bytes(state_dict: Mapping[str, Any]) -> int:
    return sum(int(v.numel()) * v.element_size() for v in state_dict.values()
               if hasattr(v, "element_size") and hasattr(v, "numel"))


def _check_free_space(dst: str, parent: str, need: int) -> None:
    """Refuse before writing when the output cannot fit: a full disk is a clear error."""
    import shutil

    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return  # unknown: the write itself will tell
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
            raise BadInput(f"{dst}: {k} is not a tensor ({type(v).__name__}), and a .safetensors "
                           f"file holds only tensors", hint="write a .pth file instead")
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
    full = any(s in msg for s in ("No space left", "os error 28", "Errno 28", "Disk quota",
                                  "File too large"))
    cause = exc.__cause__ or exc.__context__
    full = full or (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT,
                                                                    errno.EFBIG))
    if not full:
        try:
            full = shutil.disk_usage(parent).free < (1 << 20)
        except OSError:
            pass
    if full:
        return BadInput(f"{dst}: no space left on device; nothing was written")
    first = next((ln.strip() for ln in msg.splitlines() if ln.strip()), type(exc).__name__)
    return BadInput(f"{dst}: cannot write ({first[:200]}); nothing was written")


def _check_written(tmp: str, dst: str) -> None:
    """Read back the structure of the file just written: a silently short write is refused."""
    import zipfile

    from .read import read_safetensors_header, sniff_format

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
