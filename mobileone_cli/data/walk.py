"""The one walker of image folders (``eval`` DATA, ``verify --images``), and the one way an
image file is opened.

Only regular files inside DATA are read.  A FIFO named ``x.jpg`` would block the decoder
forever, a link to ``/dev/stdin`` or ``/dev/zero`` would read a stream, and a class folder
linked to ``/`` would walk the whole file system; each such entry is skipped and reported
(:class:`Skips`), never opened.  Links whose target lies inside DATA are followed; a folder
is walked once, however many links lead to it.  :func:`open_inside` re-checks at open time
(the entry may have changed since it was listed): the path resolved inside DATA, opened
without following a last link, non-blocking, and a regular file on the open descriptor.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import IO, List, Optional, Set, Tuple

from ..errors import printable
from ..io.text import special_kind
from ..rules.limits import MAX_LISTED

__all__ = ["Skips", "Walker", "open_inside", "is_image_name", "NotInside", "IMAGE_EXTENSIONS"]

# mmpretrain's IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class NotInside(OSError):
    """An image path that is not a regular file inside DATA."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


@dataclass
class Skips:
    """Entries the walker did not follow: counted, the first ``MAX_LISTED`` named with why."""

    count: int = 0
    listed: List[Tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, why: str) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append((name, why))

    def note(self) -> Optional[str]:
        """One line for a report's notes, or None when nothing was skipped."""
        if not self.count:
            return None
        shown = ", ".join(f"{printable(n)!r} ({why})" for n, why in self.listed[:3])
        more = f" and {self.count - 3} more" if self.count > 3 else ""
        return (f"skipped {self.count} entr{'y' if self.count == 1 else 'ies'} that are not "
                f"files or folders inside DATA: {shown}{more}")


class Walker:
    """Image files below one DATA folder (see the module doc)."""

    def __init__(self, root: str) -> None:
        self.root = os.fspath(root)
        self.real = os.path.realpath(self.root)
        self.skips = Skips()

    def inside(self, real: str) -> bool:
        return real == self.real or real.startswith(self.real.rstrip(os.sep) + os.sep)

    def kind(self, rel: str) -> Optional[str]:
        """'dir', 'file' or None (skipped, and recorded) for the entry ``rel`` of DATA."""
        path = os.path.join(self.root, rel)
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if not self.inside(os.path.realpath(path)):
                    self.skips.add(rel, "a link out of DATA")
                    return None
                st = os.stat(path)
        except OSError as exc:
            self.skips.add(rel, "a dangling link" if isinstance(exc, FileNotFoundError)
                           else exc.strerror or "unreadable")
            return None
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if stat.S_ISREG(st.st_mode):
            return "file"
        self.skips.add(rel, special_kind(st.st_mode))
        return None

    def _entries(self, rel: str) -> List[str]:
        try:
            with os.scandir(os.path.join(self.root, rel)) as it:
                return sorted(e.name for e in it)
        except OSError as exc:
            self.skips.add(rel or ".", exc.strerror or "unreadable")
            return []

    def folders(self) -> List[str]:
        """The non-hidden folders directly in DATA (class folders), sorted."""
        return [n for n in self._entries("") if not n.startswith(".")
                and self._folder_like(n) and self.kind(n) == "dir"]

    def _folder_like(self, rel: str) -> bool:
        """A folder, or a link that may have been meant as one (it dangles)."""
        full = os.path.join(self.root, rel)
        return os.path.isdir(full) or (os.path.islink(full) and not os.path.exists(full))

    def images(self, rel: str = "", recursive: bool = True) -> List[str]:
        """Image paths relative to DATA below folder ``rel``, in torchvision's order (folders
        by path, then file names sorted); each folder is walked once."""
        found: List[Tuple[str, List[str]]] = []
        seen: Set[Tuple[int, int]] = set()
        stack = [rel]
        while stack:
            here = stack.pop()
            try:
                st = os.stat(os.path.join(self.root, here))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            files = []
            for name in self._entries(here):
                sub = os.path.join(here, name) if here else name
                if name.startswith("."):
                    continue
                image = is_image_name(name)
                kind = self.kind(sub) if image or self._folder_like(sub) else None
                if kind == "file" and image:
                    files.append(name)
                elif kind == "dir" and recursive:
                    stack.append(sub)
            found.append((os.path.join(self.root, here) if here else self.root, files))
        out: List[str] = []
        for dirpath, files in sorted(found):
            base = os.path.relpath(dirpath, self.root)
            out.extend(f if base == "." else os.path.join(base, f) for f in sorted(files))
        return out


def open_inside(path: str, root: Optional[str] = None) -> IO[bytes]:
    """``path`` open for reading if it is a regular file (inside ``root`` when given);
    :class:`NotInside` otherwise.  Never blocks on a FIFO, never reads a device."""
    real = os.path.realpath(path)
    if root is not None:
        top = os.path.realpath(root)
        if not (real == top or real.startswith(top.rstrip(os.sep) + os.sep)):
            raise NotInside(f"{path}: not inside DATA ({real})")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(real, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotInside(f"{path}: {special_kind(mode)}, not an image file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
