"""Folder packages (Core ML's ``.mlpackage``) written like files: built under a temporary name
beside DST, checked, then published by one rename, so DST is either untouched or complete.

The temporary folder is named like :func:`.write.atomic_write`'s temp files, so a stale one left
by a killed process is found the same way.  A package replaced with ``force`` is first moved
aside, then removed once the new one is in place.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Callable, Optional

from ..errors import BadInput
from . import interrupt
from .leftovers import TEMP_PREFIX
from .published import note_published
from .write import check_destination, is_package

__all__ = ["atomic_write_dir", "is_package", "folder_size"]


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def atomic_write_dir(dst: str, write: Callable[[str], None], *, force: bool = False,
                     check: Optional[Callable[[str], None]] = None) -> int:
    """Write the package ``dst`` through ``write(tmp_path)`` (a path with DST's extension that
    does not exist yet), ``check(tmp_path)`` it, then publish it.  Returns its size in bytes."""
    dst = os.fspath(dst).rstrip("/" + os.sep)
    check_destination(dst, force=force, package=True)
    parent = os.path.dirname(os.path.abspath(dst))
    try:
        with interrupt.lock():  # an interrupt removes it, or comes before it exists
            holder = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=parent)
            interrupt.register_temp(holder)
    except OSError as exc:
        raise BadInput(f"{dst}: cannot create a folder in {parent} ({exc.strerror or exc}); "
                       f"nothing was written") from None
    tmp = os.path.join(holder, "package" + os.path.splitext(dst)[1])
    try:
        write(tmp)
        if not is_package(tmp):
            raise OSError(errno.EIO, "the exporter wrote no package manifest")
        if check is not None:
            check(tmp)
        with interrupt.lock():  # published and recorded as one step, or not at all
            _publish(tmp, dst, force)
            note_published(dst)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise BadInput(f"{dst}: no space left on device; nothing was written") from None
        raise BadInput(f"{dst}: cannot write ({exc.strerror or exc}); nothing was written") \
            from None
    finally:
        shutil.rmtree(holder, ignore_errors=True)
        interrupt.forget_temp(holder)
    return folder_size(dst)


def _publish(tmp: str, dst: str, force: bool) -> None:
    if not os.path.lexists(dst):
        os.rename(tmp, dst)  # a folder appearing meanwhile makes this fail (ENOTEMPTY/EEXIST)
        return
    if not force:
        raise BadInput(f"{dst}: already exists (written meanwhile by another process?); "
                       f"nothing was written",
                       hint="pass --force (force=True in Python) to overwrite it")
    if os.path.isdir(dst) and not os.path.islink(dst):
        old = tmp + ".old"
        os.rename(dst, old)  # inside the temp holder: removed with it
        os.rename(tmp, dst)
    else:  # a regular file or a link named DST (force)
        os.unlink(dst)
        os.rename(tmp, dst)
