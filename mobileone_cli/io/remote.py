"""A checkpoint named by its source (``apple:s2``, ``mmpretrain:s2``, ``hf-hub:REPO``, a URL)
made a local file of the cache, checked, before anything reads it.

Everything that takes a checkpoint path passes it through :func:`local_path`: a path is returned
as it is; a name is fetched (or found in the cache) and its bytes checked: mmpretrain's sha256
prefix, the Hub's sha256 of a large file, ``--sha256`` when given, and on every use the sha256 the
cache recorded when the file came.  The file then goes through the same loader as any local file
(weights-only, every limit).  An existing local file of the same name wins over a name.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

from ..arch.sources import SOURCE_BASES, KnownCheckpoint, RemoteRef, parse_remote
from ..errors import BadInput, printable
from ..rules import limits
from .cache import (
    CacheEntry,
    cache_root,
    check_record,
    check_sha256_pin,
    entry_for_known,
    entry_for_url,
    file_sha256,
    locked,
    read_record,
    write_record,
)
from .download import Progress, discard, download

__all__ = ["FetchSettings", "Fetched", "remote_ref", "resolve", "local_path", "source_url",
           "download_timeout", "offline_default", "hub_record"]

ProgressFactory = Callable[[str], ContextManager[Optional[Progress]]]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def offline_default() -> bool:
    return os.environ.get("MOBILEONE_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_timeout() -> float:
    """MOBILEONE_TIMEOUT (seconds), else the rule's default."""
    text = os.environ.get("MOBILEONE_TIMEOUT", "").strip()
    if not text:
        return limits.DOWNLOAD_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise BadInput(f"MOBILEONE_TIMEOUT={text[:40]!r}: give seconds between 0 and 3600")
    return value


@dataclass
class FetchSettings:
    """How names are fetched; the defaults come from the environment."""

    cache_dir: Optional[str] = None  # None: MOBILEONE_CACHE, $XDG_CACHE_HOME/mobileone, ~/.cache
    offline: Optional[bool] = None  # None: MOBILEONE_OFFLINE
    sha256: Optional[str] = None  # the whole sha256 the file must have (--sha256)
    force: bool = False  # download again even when cached
    timeout: Optional[float] = None  # None: MOBILEONE_TIMEOUT, else DOWNLOAD_TIMEOUT
    progress: Optional[ProgressFactory] = None  # label -> context giving a (done, total) callback

    @property
    def root(self) -> str:
        return cache_root(self.cache_dir)

    @property
    def is_offline(self) -> bool:
        return offline_default() if self.offline is None else self.offline

    @property
    def seconds(self) -> float:
        return self.timeout if self.timeout is not None else download_timeout()


@dataclass
class Fetched:
    """A named checkpoint, now a checked local file."""

    name: str  # as the user wrote it
    path: str
    size: int
    sha256: str
    status: str  # 'downloaded', 'resumed' or 'cached'
    source: str  # 'apple', 'mmpretrain', 'hf-hub' or 'url'
    url: Optional[str] = None
    known: Optional[KnownCheckpoint] = None


def remote_ref(text: str) -> Optional[RemoteRef]:
    """The remote checkpoint ``text`` names, None for a local path (an existing file of that
    name included); BadInput for a malformed name."""
    if not isinstance(text, str) or os.path.exists(text):
        return None
    try:
        return parse_remote(text)
    except ValueError as exc:
        raise BadInput(printable(exc.args[0]), hint="mobileone fetch --list shows the known "
                                                    "names") from None


def source_url(known: KnownCheckpoint) -> str:
    base, env = SOURCE_BASES[known.source]
    base = os.environ.get(env, "").strip() or base
    return base.rstrip("/") + "/" + known.file


def resolve(text: str, settings: Optional[FetchSettings] = None) -> Optional[Fetched]:
    """``text`` fetched (or found in the cache) and checked, or None when it is a local path."""
    ref = remote_ref(text)
    if ref is None:
        return None
    settings = settings or FetchSettings()
    check_sha256_pin(settings.sha256)
    root = settings.root
    try:
        return _fetch(text, ref, settings, root)
    except OSError as exc:  # the cache folder: not writable, full, not a folder
        raise BadInput(f"{text}: cannot use the cache {root} ({exc.strerror or exc})",
                       hint="--cache-dir DIR or MOBILEONE_CACHE picks another folder") from None


def _fetch(text: str, ref: RemoteRef, settings: FetchSettings, root: str) -> Fetched:
    if ref.kind == "url":
        assert ref.url is not None  # parse_source sets it for a URL
        return _fetch_url(text, ref.url, entry_for_url(root, ref.url), None, settings, "url")
    if ref.kind == "hub" or (ref.known is not None and ref.known.source == "hf-hub"):
        return _fetch_hub(ref, settings, root)
    known = ref.known
    assert known is not None  # a known name when neither a URL nor a Hub file
    return _fetch_url(text, source_url(known), entry_for_known(root, known.source, known.file),
                      known, settings, known.source)


def local_path(text: str, settings: Optional[FetchSettings] = None) -> str:
    """The local file ``text`` stands for: itself, or the checked cache file of a name."""
    fetched = resolve(text, settings)
    return text if fetched is None else fetched.path


def _check_digest(name: str, sha: str, known: Optional[KnownCheckpoint], pin: Optional[str],
                  what: str) -> None:
    if known is not None and known.sha256_prefix and not sha.startswith(known.sha256_prefix):
        raise BadInput(f"{name}: {what} has sha256 {sha[:16]}..., but {known.source} publishes "
                       f"{known.sha256_prefix}...; refused")
    if pin is not None and sha != pin:
        raise BadInput(f"{name}: {what} has sha256 {sha[:16]}..., but --sha256 pins "
                       f"{pin[:16]}...; refused")


def _progress(settings: FetchSettings, label: str):
    return settings.progress(label) if settings.progress else contextlib.nullcontext(None)


def _cached(name: str, entry: CacheEntry, known: Optional[KnownCheckpoint], pin: Optional[str],
            source: str) -> Optional[Fetched]:
    """The cached file, checked against its record (and the pin, the publisher's prefix), or
    None when the cache has no file with a record."""
    if not os.path.isfile(entry.path):
        return None
    record = read_record(entry.record)
    if record is None:
        return None
    sha = check_record(entry.path, record, name)
    _check_digest(name, sha, known, pin, "the cached file")
    return Fetched(name, entry.path, os.path.getsize(entry.path), sha, "cached", source,
                   record.get("url"), known)


def _fetch_url(name: str, url: str, entry: CacheEntry, known: Optional[KnownCheckpoint],
               settings: FetchSettings, source: str) -> Fetched:
    pin = check_sha256_pin(settings.sha256)
    cached = None if settings.force else _cached(name, entry, known, pin, source)
    if cached is not None:
        return cached
    if settings.is_offline:
        if os.path.exists(entry.path):
            raise BadInput(f"{name}: {entry.path} has no record of its download and is not "
                           f"trusted", hint="fetch it again without --offline")
        raise BadInput(f"{name} is not in the cache ({settings.root}) and --offline forbids "
                       f"downloading it", hint=f"mobileone fetch {name} downloads it")
    with locked(entry.path):  # another command may have fetched it while this one waited
        cached = None if settings.force else _cached(name, entry, known, pin, source)
        if cached is not None:
            return cached
        with _progress(settings, name) as callback:
            transfer = download(url, entry.part, timeout=settings.seconds, progress=callback)
        sha = file_sha256(entry.part)
        try:
            _check_digest(name, sha, known, pin, "the download")
        except BadInput as exc:
            discard(entry.part)
            exc.message += "; nothing was cached"
            raise
        with contextlib.suppress(OSError):  # the old record never describes the new file
            os.unlink(entry.record)
        os.replace(entry.part, entry.path)
        discard(entry.part)
        write_record(entry.record, name=name, source=source, url=url, final_url=transfer.url,
                     size=transfer.size, sha256=sha)
    status = "resumed" if transfer.resumed_from else "downloaded"
    return Fetched(name, entry.path, transfer.size, sha, status, source, url, known)


def hub_record(root: str, repo: str, commit: str, file: str) -> str:
    """Where the record of a Hub file lives (beside, not inside, huggingface_hub's cache)."""
    parts = [*repo.split("/"), commit, *file.split("/")]
    return os.path.join(root, "hf-hub-records", *parts) + ".json"


def _fetch_hub(ref: RemoteRef, settings: FetchSettings, root: str) -> Fetched:
    from .hub import hub_fetch, remove_hub_file

    known = ref.known
    if known is not None:
        ref = RemoteRef(ref.text, "hub", known=known, repo=known.repo, file=known.file)
    pin = check_sha256_pin(settings.sha256)
    with _progress(settings, ref.text) as callback:
        got = hub_fetch(ref, root, offline=settings.is_offline, timeout=settings.seconds,
                        force=settings.force, progress=callback)
    record_file = hub_record(root, got.repo, got.commit, got.file)
    sha = file_sha256(got.path)
    record = read_record(record_file)
    if record is not None and not got.downloaded:
        check_record(got.path, record, ref.text, sha)
    what = "the download" if got.downloaded else "the cached file"
    try:
        if _HEX64.match(got.blob_name) and sha != got.blob_name:
            raise BadInput(f"{ref.text}: {what} has sha256 {sha[:16]}..., but the Hub says "
                           f"{got.blob_name[:16]}...; refused")
        _check_digest(ref.text, sha, known, pin, what)
    except BadInput as exc:
        if got.downloaded:
            remove_hub_file(got.path)
            exc.message += "; nothing was cached"
        raise
    if record is None or got.downloaded:
        write_record(record_file, name=ref.text, source="hf-hub", repo=got.repo, file=got.file,
                     commit=got.commit, size=os.path.getsize(got.path), sha256=sha)
    return Fetched(ref.text, got.path, os.path.getsize(got.path), sha,
                   "downloaded" if got.downloaded else "cached", "hf-hub",
                   f"hf-hub:{got.repo}@{got.commit}/{got.file}", known)
