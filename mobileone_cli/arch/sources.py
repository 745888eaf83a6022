"""Official MobileOne checkpoints by name, and the grammar of a checkpoint named by its source.

Pure data, no torch, no network: what each known name points to (the source, the file, its
layout, form and variant, the sha256 prefix its publisher states) and how a text such as
``apple:s2``, ``mmpretrain:s2``, ``hf-hub:timm/mobileone_s0.apple_in1k`` or ``https://...``
parses.  Fetching lives in :mod:`mobileone_cli.io.remote`.

Each download source has a base URL that an environment variable replaces (a mirror, or the
loopback server of the tests); the Hub's endpoint is huggingface_hub's own ``HF_ENDPOINT``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["KnownCheckpoint", "RemoteRef", "KNOWN", "SOURCE_BASES", "SCHEMES", "HUB_FILES",
           "parse_remote", "scheme_of", "known_names", "VARIANTS"]

VARIANTS = ("s0", "s1", "s2", "s3", "s4")

# source -> (default base URL, the environment variable that replaces it)
SOURCE_BASES: Dict[str, Tuple[str, str]] = {
    "apple": ("https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/",
              "MOBILEONE_APPLE_URL"),
    "mmpretrain": ("https://download.openmmlab.com/mmclassification/v0/mobileone/",
                   "MOBILEONE_MMPRETRAIN_URL"),
}

# OpenMMLab file names end with the first 8 hex digits of the file's sha256.
MMPRETRAIN_SHA256 = {"s0": "0bc94952", "s1": "ceeef467", "s2": "9c7ecb97", "s3": "c95eb3bf",
                     "s4": "28d888cb"}

# Files a Hub repo is searched for when its name gives none, the safer format first.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")

SCHEMES = ("apple", "mmpretrain", "timm", "hf-hub", "https", "http")


@dataclass(frozen=True)
class KnownCheckpoint:
    """One official checkpoint: where it is and what it holds."""

    name: str  # 'apple:s2-fused'
    source: str  # 'apple', 'mmpretrain' or 'hf-hub'
    file: str  # its file name at the source (in the Hub repo for 'hf-hub')
    layout: str  # 'apple', 'mmpretrain' or 'timm'
    form: str  # 'train' or 'deploy'
    variant: str  # 's0'..'s4'
    sha256_prefix: Optional[str] = None  # what the publisher states of its sha256
    repo: Optional[str] = None  # the Hub repository, for 'hf-hub'


def _table() -> Dict[str, KnownCheckpoint]:
    out: Dict[str, KnownCheckpoint] = {}
    for v in VARIANTS:
        out[f"apple:{v}"] = KnownCheckpoint(f"apple:{v}", "apple", f"mobileone_{v}_unfused.pth.tar",
                                            "apple", "train", v)
    for v in VARIANTS:
        out[f"apple:{v}-fused"] = KnownCheckpoint(f"apple:{v}-fused", "apple",
                                                  f"mobileone_{v}.pth.tar", "apple", "deploy", v)
    for v in VARIANTS:
        prefix = MMPRETRAIN_SHA256[v]
        out[f"mmpretrain:{v}"] = KnownCheckpoint(
            f"mmpretrain:{v}", "mmpretrain", f"mobileone-{v}_8xb32_in1k_20221110-{prefix}.pth",
            "mmpretrain", "train", v, sha256_prefix=prefix)
    for v in VARIANTS:
        out[f"timm:{v}"] = KnownCheckpoint(f"timm:{v}", "hf-hub", HUB_FILES[0], "timm", "train",
                                           v, repo=f"timm/mobileone_{v}.apple_in1k")
    return out


KNOWN: Dict[str, KnownCheckpoint] = _table()


def known_names() -> Tuple[str, ...]:
    return tuple(KNOWN)


@dataclass(frozen=True)
class RemoteRef:
    """A checkpoint named by its source: a known name, a Hub file, or a URL."""

    text: str  # as the user wrote it
    kind: str  # 'known', 'hub' or 'url'
    known: Optional[KnownCheckpoint] = None
    repo: Optional[str] = None  # 'hub': owner/name
    revision: Optional[str] = None  # 'hub': branch, tag or commit (None: main)
    file: Optional[str] = None  # 'hub': the file in the repo (None: the first of HUB_FILES)
    url: Optional[str] = None  # 'url'


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_VARIANT = re.compile(r"^(?:mobileone[_-]?)?(s[0-4])(-fused)?$", re.I)
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def scheme_of(text: str) -> Optional[str]:
    """The source scheme ``text`` starts with ('apple', 'hf-hub', 'https', ...), else None."""
    m = _SCHEME.match(text)
    if m is None or m.group(1).lower() not in SCHEMES:
        return None
    return m.group(1).lower()


def parse_remote(text: str) -> Optional[RemoteRef]:
    """``text`` as a remote checkpoint, or None when it names none (a local path).

    ValueError with a one-line reason for a text of a known scheme that names nothing:
    ``apple:s9``, ``hf-hub:`` without a repository."""
    scheme = scheme_of(text)
    if scheme is None:
        return None
    rest = text[len(scheme) + 1:]
    if scheme in ("https", "http"):
        if not rest.startswith("//") or len(rest) <= 2:
            raise ValueError(f"{text!r} is not a URL")
        return RemoteRef(text, "url", url=text)
    if scheme == "hf-hub":
        return _hub(text, rest)
    m = _VARIANT.match(rest.strip())
    name = f"{scheme}:{m.group(1).lower()}{(m.group(2) or '').lower()}" if m else None
    if name not in KNOWN:
        raise ValueError(f"{text!r} is not a known checkpoint; {scheme} has "
                         f"{', '.join(n for n in KNOWN if n.startswith(scheme + ':'))}")
    return RemoteRef(text, "known", known=KNOWN[name])


def _hub(text: str, rest: str) -> RemoteRef:
    """``hf-hub:owner/name[@revision][/path/in/repo]`` (the form of huggingface_hub's hf://
    paths; a revision holding '/' is written with %2F)."""
    parts = rest.split("/")
    if len(parts) < 2:
        raise ValueError(f"{text!r}: give the repository as owner/name, e.g. "
                         f"hf-hub:timm/mobileone_s0.apple_in1k")
    owner, name = parts[0], parts[1]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = revision.replace("%2F", "/").replace("%2f", "/")
        if not revision or any(c in revision for c in "\\\0") or ".." in revision:
            raise ValueError(f"{text!r}: the revision after '@' is empty or invalid")
    if not (_REPO_PART.match(owner) and _REPO_PART.match(name)):
        raise ValueError(f"{text!r}: {owner}/{name} is not a Hub repository id")
    file = "/".join(parts[2:]) or None
    if file is not None and (any(p in ("", ".", "..") for p in parts[2:]) or "\\" in file):
        raise ValueError(f"{text!r}: {file!r} is not a file name in a repository")
    return RemoteRef(text, "hub", repo=f"{owner}/{name}", revision=revision, file=file)
