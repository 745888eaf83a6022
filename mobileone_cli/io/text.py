"""Text inputs (``--config``, ``--labels``, ``--classes``), read with a byte cap that holds.

A size check on ``st_size`` alone does not bound a read: a device reports 0 (``/dev/zero`` then
yields gigabytes) and opening a FIFO waits for a writer forever.  :func:`open_text` accepts
regular files only: the path is checked before it is opened, opened with ``O_NONBLOCK`` (a
FIFO swapped in meanwhile cannot block the open) and checked again on the open descriptor;
then at most ``cap + 1`` bytes are ever read from it, so a file that grows while it is read is
refused at the cap too.  Every text input of the tool is read through here.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
from typing import IO, Iterator, Tuple

from ..errors import BadInput
from ..rules.limits import MAX_TEXT_BYTES

__all__ = ["open_text", "read_text", "text_lines", "check_regular", "special_kind"]


def special_kind(mode: int) -> str:
    """What a file that is not a regular file is, for a one-line refusal or a skip note."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: str, what: str) -> os.stat_result:
    """The stat of ``path`` (links followed) if it is a regular file; BadInput otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such {what}") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{path}: is {special_kind(st.st_mode)}, not a {what} (a regular file)")
    return st


class _Capped(io.RawIOBase):
    """A raw reader of one descriptor that never reads more than ``cap + 1`` bytes, and refuses
    the file once more than ``cap`` arrived."""

    def __init__(self, fd: int, cap: int, path: str, what: str) -> None:
        super().__init__()
        self._fd, self._left, self._cap = fd, cap, cap
        self._path, self._what = path, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        want = max(1, min(len(view), self._left + 1))
        data = os.read(self._fd, want)
        view[:len(data)] = data
        self._left -= len(data)
        if self._left < 0:
            raise BadInput(f"{self._path}: more than {self._cap:,} bytes; a {self._what} is at "
                           f"most that")
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


@contextlib.contextmanager
def open_text(path: str, what: str, cap: int = MAX_TEXT_BYTES) -> Iterator[IO[str]]:
    """``path`` open for reading as UTF-8 text, at most ``cap`` bytes (see the module doc).

    A decoding error surfaces as ``UnicodeDecodeError`` from the reads; :func:`read_text` and
    :func:`text_lines` turn it into one line."""
    path = os.fspath(path)
    st = check_regular(path, what)
    if st.st_size > cap:
        raise BadInput(f"{path}: {st.st_size:,} bytes; a {what} is at most {cap:,}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the stat and the open
            raise BadInput(f"{path}: is {special_kind(mode)}, not a {what} (a regular file)")
    except BaseException:
        os.close(fd)
        raise
    raw = _Capped(fd, cap, path, what)
    with io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="strict",
                          newline=None) as fh:
        yield fh


def read_text(path: str, what: str, cap: int = MAX_TEXT_BYTES) -> str:
    """The whole text of ``path`` (at most ``cap`` bytes, UTF-8); BadInput otherwise."""
    try:
        with open_text(path, what, cap) as fh:
            return fh.read()
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a UTF-8 text file (a {what} is text)") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def text_lines(path: str, what: str, max_line: int,
               cap: int = MAX_TEXT_BYTES) -> Iterator[Tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of ``path`` not starting with '#';
    BadInput for a line longer than ``max_line`` characters."""
    try:
        with open_text(path, what, cap) as fh:
            for n, line in enumerate(fh, 1):
                if len(line) > max_line:
                    raise BadInput(f"{path}:{n}: a line of over {max_line} characters; is this "
                                   f"a {what}?")
                text = line.strip()
                if text and not text.startswith("#"):
                    yield n, text
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a UTF-8 text file (a {what} is text)") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
