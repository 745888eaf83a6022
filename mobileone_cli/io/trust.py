"""Which files may be unpickled with ``weights_only=False``: the ones the user named, checked per
file before anything of it is unpickled.

A command-line flag among the file arguments can be forged by a file name: in a folder holding a
file called ``--trust-file``, ``mobileone convert * out/`` would pass it.  So trust is never a
flag of the command.  It names the trusted files, and comes from where a shell pattern cannot
reach: the option before the command (``mobileone --trust-file FILE convert ...``) or the
environment (``MOBILEONE_TRUST``).  A file is trusted when it IS a named file (same device and
inode, so no other name can borrow the trust) or when its bytes have a named SHA-256
(``sha256:HEX``); the bytes hashed are the bytes unpickled.

The library's ``trust=True`` (a decision written in the caller's code) still trusts every file
of the call.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, BinaryIO, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import BadInput, printable

__all__ = ["TRUST_ENV", "TrustList", "trust_list", "trust_from_environment", "open_trusted"]

TRUST_ENV = "MOBILEONE_TRUST"
_SHA256 = re.compile(r"sha256:([0-9a-fA-F]{64})\Z")


@dataclass(frozen=True)
class TrustList:
    """The files the user trusts: by identity (device, inode) or by the SHA-256 of their bytes."""

    files: FrozenSet[Tuple[int, int]] = frozenset()
    digests: FrozenSet[str] = frozenset()
    names: Tuple[str, ...] = field(default=(), compare=False)  # as given, for messages

    def __bool__(self) -> bool:
        return bool(self.files or self.digests)

    def __or__(self, other: "TrustList") -> "TrustList":
        return TrustList(self.files | other.files, self.digests | other.digests,
                         self.names + other.names)


def trust_list(values: Sequence[str], origin: str = "--trust-file") -> TrustList:
    """A TrustList of ``values`` (paths, or ``sha256:HEX``); BadInput naming ``origin`` when a
    path is not a regular file that exists."""
    files, digests, names = set(), set(), []
    for value in values:
        value = os.fspath(value)
        m = _SHA256.match(value.strip())
        if m:
            digests.add(m.group(1).lower())
            names.append(value.strip())
            continue
        if value.lower().startswith("sha256:"):
            raise BadInput(f"{origin} {printable(value)}: a SHA-256 is 64 hexadecimal digits")
        try:
            st = os.stat(value)
        except OSError as exc:
            raise BadInput(f"{origin} {printable(value)}: cannot trust a file that cannot be "
                           f"read ({exc.strerror or exc})") from None
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{origin} {printable(value)}: not a regular file")
        files.add((st.st_dev, st.st_ino))
        names.append(value)
    return TrustList(frozenset(files), frozenset(digests), tuple(names))


def trust_from_environment(environ: Optional[Mapping[str, str]] = None) -> TrustList:
    """The files ``MOBILEONE_TRUST`` names (paths or ``sha256:HEX``, separated by
    ``os.pathsep``)."""
    value = (os.environ if environ is None else environ).get(TRUST_ENV, "")
    parts: List[str] = []
    for piece in value.split(os.pathsep):
        if parts and parts[-1].strip().lower() == "sha256" and os.pathsep == ":":
            parts[-1] += ":" + piece  # 'sha256:HEX' is one name
        else:
            parts.append(piece)
    return trust_list([v for v in parts if v.strip()], TRUST_ENV)


def open_trusted(path: str, trust: Union[bool, TrustList, None]) -> Optional[Union[str, BinaryIO]]:
    """What to unpickle with ``weights_only=False`` for ``path``: ``path`` itself (library
    ``trust=True``), an open file or the bytes whose identity or hash the user named, or None
    (not trusted: weights-only loading)."""
    if trust is True:
        return path
    if not isinstance(trust, TrustList) or not trust:
        return None
    try:
        fh = open(path, "rb")
    except OSError:
        return None  # the weights-only load reports it
    try:
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) in trust.files:
            handle: Any = fh
            fh = None
            return handle
        if trust.digests and stat.S_ISREG(st.st_mode):
            data = fh.read()
            if hashlib.sha256(data).hexdigest() in trust.digests:
                return io.BytesIO(data)
        return None
    finally:
        if fh is not None:
            fh.close()
