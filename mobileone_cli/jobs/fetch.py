"""``fetch``: official checkpoints (or any named one) into the cache, checked; and the table of
the known names with what each holds and whether the cache has it.

Every command that reads a checkpoint fetches names itself (:func:`mobileone_cli.io.remote.
local_path`); this job is for getting files ahead of time (before going offline, in a CI
cache step) and for seeing what the names are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from ..arch.sources import KNOWN, KnownCheckpoint
from ..errors import BadInput
from ..io.cache import entry_for_known, read_record
from ..io.remote import Fetched, FetchSettings, remote_ref, resolve, source_url

__all__ = ["FetchReport", "KnownRow", "KnownList", "fetch_names", "list_known"]


@dataclass
class FetchReport:
    cache: str
    fetched: List[Fetched] = field(default_factory=list)


@dataclass
class KnownRow:
    known: KnownCheckpoint
    url: str  # where it is fetched from (the Hub file for 'hf-hub')
    cached: Optional[str] = None  # its file in the cache, when there


@dataclass
class KnownList:
    cache: str
    rows: List[KnownRow] = field(default_factory=list)


def fetch_names(names: Sequence[str], settings: Optional[FetchSettings] = None) -> FetchReport:
    """Fetch each name (or find it in the cache), checked; every name is validated first, so a
    typo in the last one costs no download."""
    settings = settings or FetchSettings()
    if not names:
        raise BadInput("give one or more names, e.g. mobileone fetch apple:s0",
                       hint="mobileone fetch --list shows the known names")
    for name in names:
        if remote_ref(name) is None:
            raise BadInput(f"{name!r} is not a checkpoint name (apple:s0, mmpretrain:s0, "
                           f"hf-hub:REPO, https://...)",
                           hint="mobileone fetch --list shows the known names")
    if settings.sha256 is not None and len(names) > 1:
        raise BadInput(f"--sha256 pins one file; {len(names)} names were given")
    report = FetchReport(cache=settings.root)
    for name in names:
        fetched = resolve(name, settings)
        assert fetched is not None  # every name was checked to be remote above
        report.fetched.append(fetched)
    return report


def _hub_cached(known: KnownCheckpoint, root: str) -> Optional[str]:
    if known.repo is None:  # not a Hub file
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    from ..io.hub import hub_folder

    path = try_to_load_from_cache(known.repo, known.file, cache_dir=hub_folder(root))
    return path if isinstance(path, str) else None


def list_known(settings: Optional[FetchSettings] = None) -> KnownList:
    """The known names, each with its source address and its cache file (not re-hashed here:
    every use checks that)."""
    settings = settings or FetchSettings()
    root = settings.root
    out = KnownList(cache=root)
    for known in KNOWN.values():
        if known.source == "hf-hub":
            out.rows.append(KnownRow(known, f"hf-hub:{known.repo}/{known.file}",
                                     _hub_cached(known, root)))
            continue
        entry = entry_for_known(root, known.source, known.file)
        cached = entry.path if os.path.exists(entry.path) and read_record(entry.record) else None
        out.rows.append(KnownRow(known, source_url(known), cached))
    return out
