"""Files that an exported artifact names, confined to the artifact.

An ``.mlpackage`` names its model and weights in ``Manifest.json`` and its constants name a
weight file; an ONNX model names external data files in its tensors' ``location`` fields.  A
hostile artifact could name ``/dev/zero`` (read until memory runs out), ``/etc/passwd``, a FIFO
(the read never returns) or ``../../`` anything.  Every such name is checked here before any
library opens it: a relative path, resolving (links included) inside the artifact's own folder,
to a regular file of at most ``MAX_EXTERNAL_BYTES``; a package folder holds only files, folders
and links that stay inside it.  Files are opened without blocking and checked again on the
descriptor; their bytes are memory-mapped, never copied.
"""
from __future__ import annotations

import json
import mmap
import os
import stat
from typing import Any, Dict

from ..errors import BadInput, printable
from ..io.text import read_text, special_kind
from ..rules.limits import MAX_EXTERNAL_BYTES

__all__ = ["inside", "confined_path", "check_package", "map_confined", "MAX_PACKAGE_ENTRIES"]

MAX_PACKAGE_ENTRIES = 10_000  # files and folders of one .mlpackage (an export writes 5)
MAX_MANIFEST_BYTES = 1 << 20  # Manifest.json (an export writes ~600 bytes)


def inside(top_real: str, real: str) -> bool:
    """``real`` (a resolved path) is ``top_real`` or below it."""
    return real == top_real or real.startswith(top_real.rstrip(os.sep) + os.sep)


def confined_path(top: str, base: str, name: Any, where: str, *, folder: bool = False) -> str:
    """``base``/``name`` resolved, if ``name`` is a relative path that stays inside ``top``
    and names a regular file (or, with ``folder``, a folder); BadInput naming ``where``."""
    shown = printable(str(name))[:200]
    if not isinstance(name, str) or not name or "\0" in name:
        raise BadInput(f"{where}: names the file {shown!r}, which is not a file name")
    if os.path.isabs(name):
        raise BadInput(f"{where}: names the absolute path {shown!r}; an artifact may only name "
                       f"files inside itself")
    real = os.path.realpath(os.path.join(base, name))
    if not inside(os.path.realpath(top), real):
        raise BadInput(f"{where}: names {shown!r}, which lies outside {top}; an artifact may "
                       f"only name files inside itself")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise BadInput(f"{where}: names {shown!r}, which cannot be read "
                       f"({exc.strerror or exc})") from None
    ok = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
    if not ok:
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else special_kind(st.st_mode)
        raise BadInput(f"{where}: names {shown!r}, which is {kind}, not a "
                       f"{'folder' if folder else 'regular file'}")
    return real


def check_package(path: str) -> None:
    """Refuse an ``.mlpackage`` folder holding anything but files, folders and links inside
    it, or whose manifest names a path outside it."""
    top = os.path.realpath(path)
    count = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            count += 1
            if count > MAX_PACKAGE_ENTRIES:
                raise BadInput(f"{path}: more than {MAX_PACKAGE_ENTRIES:,} entries; an exported "
                               f"package holds a few")
            full = os.path.join(dirpath, name)
            rel = printable(os.path.relpath(full, path))
            try:
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    if not inside(top, os.path.realpath(full)):
                        raise BadInput(f"{path}: {rel!r} links outside the package")
                    st = os.stat(full)
            except OSError as exc:
                raise BadInput(f"{path}: {rel!r} cannot be read ({exc.strerror or exc})") \
                    from None
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                kind = special_kind(st.st_mode)
                raise BadInput(f"{path}: {rel!r} is {kind}; a package holds files")
    manifest = os.path.join(path, "Manifest.json")
    text = read_text(manifest, "Core ML package manifest", cap=MAX_MANIFEST_BYTES)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput(f"{manifest}: not a JSON manifest") from None
    entries = data.get("itemInfoEntries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise BadInput(f"{manifest}: no itemInfoEntries")
    for key, entry in entries.items():
        named = entry.get("path") if isinstance(entry, dict) else None
        confined_path(path, os.path.join(path, "Data"), named, f"{manifest} (item "
                      f"{printable(str(key))[:60]!r})",
                      folder=isinstance(entry, dict) and entry.get("name") == "weights")


def map_confined(real: str, where: str, cache: Dict[str, Any]) -> Any:
    """The bytes of the regular file ``real`` (resolved by :func:`confined_path`), mapped
    read-only; at most ``MAX_EXTERNAL_BYTES``.  ``cache`` keeps each file mapped once."""
    if real in cache:
        return cache[real]
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise BadInput(f"{where}: cannot read {real} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{where}: {real} is {special_kind(st.st_mode)}, not a regular file")
        if st.st_size > MAX_EXTERNAL_BYTES:
            raise BadInput(f"{where}: {real} is {st.st_size:,} bytes, more than the limit of "
                           f"{MAX_EXTERNAL_BYTES:,} for a file an artifact names")
        data: Any = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if st.st_size else b""
    finally:
        os.close(fd)
    cache[real] = data
    return data

