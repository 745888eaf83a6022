"""The download cache: where fetched checkpoints live, and the record that vouches for each.

The folder is ``--cache-dir``, else ``MOBILEONE_CACHE``, else ``$XDG_CACHE_HOME/mobileone``, else
``~/.cache/mobileone``.  Every cached file has a record beside it (``FILE.json``: its source,
URL, size and sha256), written after the file is complete and checked; a file is only ever put
under its final name by a rename.  On every use the file is hashed again and compared with its
record, so a file changed in the cache (a disk fault, an edit) is refused, never loaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional
from urllib.parse import urlsplit

from ..errors import BadInput

__all__ = ["cache_root", "CacheEntry", "entry_for_known", "entry_for_url", "file_sha256",
           "read_record", "write_record", "check_record", "locked", "record_path",
           "write_json_atomic", "check_sha256_pin"]

CHUNK = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def cache_root(cache_dir: Optional[str] = None) -> str:
    """The cache folder: ``cache_dir``, MOBILEONE_CACHE, $XDG_CACHE_HOME/mobileone, or
    ~/.cache/mobileone (an XDG_CACHE_HOME that is not absolute is ignored, as the spec says)."""
    if cache_dir:
        return os.path.abspath(os.path.expanduser(cache_dir))
    env = os.environ.get("MOBILEONE_CACHE", "").strip()
    if env:
        return os.path.abspath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "mobileone")
    return os.path.join(os.path.expanduser("~"), ".cache", "mobileone")


@dataclass(frozen=True)
class CacheEntry:
    """Where one downloaded file lives in the cache."""

    path: str  # the file, under its final name

    @property
    def part(self) -> str:
        """The partial download, kept between tries so a broken transfer resumes."""
        return self.path + ".part"

    @property
    def record(self) -> str:
        return record_path(self.path)


def record_path(path: str) -> str:
    return path + ".json"


def entry_for_known(root: str, source: str, file: str) -> CacheEntry:
    return CacheEntry(os.path.join(root, source, file))


def _safe_name(name: str) -> str:
    """A file name from a URL's last segment: printable, no separators, not hidden."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".")[:120]
    return name or "download"


def entry_for_url(root: str, url: str) -> CacheEntry:
    """``root/url/HOST/HASH/NAME``: the URL's hash keeps two URLs with the same file name apart,
    and nothing of the URL can climb out of the cache."""
    parts = urlsplit(url)
    host = _safe_name(parts.hostname or "host")
    key = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    name = _safe_name(os.path.basename(parts.path.rstrip("/")))
    return CacheEntry(os.path.join(root, "url", host, key, name))


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    """``data`` as JSON at ``path``, by a temp file and a rename (never a half record)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_record(record: str) -> Optional[Dict[str, Any]]:
    """The record at ``record``, or None when there is none (or an unreadable one)."""
    try:
        with open(record, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _HEX64.match(str(data.get("sha256", ""))):
        return None
    return data


def write_record(record: str, **facts: Any) -> Dict[str, Any]:
    write_json_atomic(record, facts)
    return facts


def check_sha256_pin(pin: Optional[str]) -> Optional[str]:
    """``--sha256``: 64 hex digits (any case), or BadInput."""
    if pin is None:
        return None
    text = pin.strip().lower()
    if not _HEX64.match(text):
        raise BadInput(f"--sha256 {pin[:80]!r}: give the file's whole sha256 (64 hex digits)")
    return text


def check_record(path: str, record: Dict[str, Any], name: str,
                 actual: Optional[str] = None) -> str:
    """The sha256 of the cached ``path`` (``actual`` when already computed), which must be the
    one its record holds; BadInput (the file is neither used nor deleted: the user decides) when
    it changed."""
    actual = actual or file_sha256(path)
    if actual != record["sha256"]:
        raise BadInput(f"{name}: the cached file {path} changed since it was downloaded "
                       f"(sha256 {actual[:16]}..., its record says {record['sha256'][:16]}...); "
                       f"it was not used",
                       hint=f"download it again: mobileone fetch --force {name}")
    return actual


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``path`` exclusively (POSIX): two commands fetching one file
    take turns instead of writing one partial file together.  Elsewhere, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f".{name}.lock"), "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
