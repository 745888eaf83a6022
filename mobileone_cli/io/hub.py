"""A file of a Hugging Face Hub repository, through huggingface_hub (the optional ``hub`` extra).

huggingface_hub does the HTTP: its cache (``CACHE/hf-hub``, the layout of ``~/.cache/huggingface``),
its resume, its atomic rename of a finished blob, and ``HF_ENDPOINT``/``HF_TOKEN``.  This module
adds what the tool asks of every download: the size bound before a byte is fetched (the Hub
announces it), the tool's timeout, its progress bar, one-line errors; and it names the blob, whose
name is the file's sha256 for the Hub's large (LFS) files, so the caller can check the bytes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional

from ..arch.sources import HUB_FILES, RemoteRef
from ..errors import BadInput, first_line
from ..rules import limits
from .download import Progress, check_url

__all__ = ["HubFile", "hub_fetch", "hub_folder", "remove_hub_file"]


@dataclass
class HubFile:
    path: str  # the file in huggingface_hub's snapshot folder (a link to its blob)
    repo: str
    file: str
    commit: str  # the commit the file was resolved at
    downloaded: bool  # False: it was in the cache already
    blob_name: str  # the blob's name: the Hub's ETag (the sha256 of an LFS file)


def hub_folder(root: str) -> str:
    return os.path.join(root, "hf-hub")


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise BadInput("hf-hub: names need huggingface_hub",
                       hint="pip install 'mobileone-cli[hub]'") from None
    return huggingface_hub


def _bar(progress: Optional[Progress]):
    """A tqdm class that draws nothing itself and reports to the tool's progress callback."""
    from tqdm import tqdm

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done, self.size = kwargs.get("initial") or 0, kwargs.get("total")
            if progress:
                progress(self.done, self.size)

        def update(self, n=1):
            self.done += n or 0
            if progress:
                progress(self.done, self.size)

    return Bar


@contextlib.contextmanager
def _download_timeout(hub, seconds: float) -> Iterator[None]:
    """huggingface_hub reads its download timeout from a module constant at each request."""
    constants = hub.constants
    before = constants.HF_HUB_DOWNLOAD_TIMEOUT
    constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds
    try:
        yield
    finally:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = before


def _endpoint() -> Optional[str]:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None
    if endpoint is not None:
        check_url(endpoint + "/")
    return endpoint


def _commit_of(path: str, file: str) -> str:
    """The commit folder of a snapshot path ``.../snapshots/COMMIT/FILE``."""
    folder = path
    for _ in file.split("/"):
        folder = os.path.dirname(folder)
    return os.path.basename(folder)


def _one(hub, ref: RemoteRef, file: str, cache: str, *, offline: bool, timeout: float,
         force: bool, progress: Optional[Progress]) -> HubFile:
    assert ref.repo is not None  # a Hub reference names its repository
    common = dict(revision=ref.revision, cache_dir=cache, endpoint=_endpoint())
    if offline:
        path = hub.hf_hub_download(ref.repo, file, local_files_only=True, **common)
        downloaded = False
    else:
        info = hub.hf_hub_download(ref.repo, file, dry_run=True, etag_timeout=timeout,
                                   force_download=force, **common)
        if info.file_size is None:
            raise BadInput(f"{ref.text}: the Hub did not say how large {file} is; not fetched")
        if info.file_size > limits.MAX_DOWNLOAD:
            raise BadInput(f"{ref.text}: {file} has {info.file_size:,} bytes, more than a "
                           f"checkpoint may have ({limits.MAX_DOWNLOAD:,}); nothing was cached")
        with _download_timeout(hub, timeout):
            path = hub.hf_hub_download(ref.repo, file, etag_timeout=timeout, force_download=force,
                                       tqdm_class=_bar(progress), **common)
        downloaded = bool(info.will_download)
    blob = os.path.realpath(path)
    if os.path.getsize(blob) > limits.MAX_DOWNLOAD:
        remove_hub_file(path)
        raise BadInput(f"{ref.text}: {file} is larger than a checkpoint may be "
                       f"({limits.MAX_DOWNLOAD:,} bytes); removed from the cache")
    return HubFile(path=path, repo=ref.repo, file=file, commit=_commit_of(path, file),
                   downloaded=downloaded, blob_name=os.path.basename(blob))


def hub_fetch(ref: RemoteRef, root: str, *, offline: bool, timeout: float, force: bool = False,
              progress: Optional[Progress] = None) -> HubFile:
    """The file ``ref`` names (by default the first of HUB_FILES the repository holds), from the
    cache or the Hub; BadInput with one line for every way this fails."""
    hub = _hub()
    from huggingface_hub import errors

    cache = hub_folder(root)
    files = [ref.file] if ref.file else list(HUB_FILES)
    missing = []
    for file in files:
        try:
            return _one(hub, ref, file, cache, offline=offline, timeout=timeout, force=force,
                        progress=progress)
        except (errors.RemoteEntryNotFoundError, errors.LocalEntryNotFoundError,
                errors.OfflineModeIsEnabled) as exc:
            if offline or isinstance(exc, errors.RemoteEntryNotFoundError):
                missing.append(file)
                continue
            raise BadInput(f"{ref.text}: {first_line(str(exc), 300)}",
                           hint="offline? --offline uses only the cache") from None
        except errors.RepositoryNotFoundError:
            raise BadInput(f"{ref.text}: no repository {ref.repo} on the Hub (or it is "
                           f"private: set HF_TOKEN)") from None
        except errors.RevisionNotFoundError:
            raise BadInput(f"{ref.text}: {ref.repo} has no revision {ref.revision!r}") from None
        except (errors.HfHubHTTPError, errors.FileMetadataError, errors.HFValidationError,
                ValueError, OSError) as exc:
            raise BadInput(f"{ref.text}: {type(exc).__name__}: {first_line(str(exc), 300)}"
                           ) from None
        except Exception as exc:  # the HTTP client's own errors (timeouts, refused connections)
            if type(exc).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore"):
                raise
            raise BadInput(f"{ref.text}: cannot reach the Hub ({type(exc).__name__}: "
                           f"{first_line(str(exc), 200)})",
                           hint="offline? --offline uses only the cache") from None
    where = "in the cache" if offline else f"in {ref.repo}"
    raise BadInput(f"{ref.text}: no {' or '.join(missing)} {where}",
                   hint=("fetch it first without --offline" if offline else
                         f"name the file: hf-hub:{ref.repo}/FILE"))


def remove_hub_file(path: str) -> None:
    """Remove a snapshot's link and its blob (a file that failed its check)."""
    blob = os.path.realpath(path)
    for p in (path, blob):
        with contextlib.suppress(OSError):
            os.unlink(p)
