"""One file over HTTP(S) into a partial file of the cache: bounded, resumable, stdlib only.

* Only ``https://`` is fetched, and ``http://`` to this machine alone (127.0.0.1, ::1,
  localhost: a local mirror, the tests); a redirect is held to the same rule, so an https
  download is never downgraded, and at most MAX_REDIRECTS are followed.
* Every connection and every read waits at most ``timeout`` seconds (a server that never
  answers is an error, not a hang).
* A transfer that breaks off is resumed from the bytes already on disk, by a Range request
  made conditional on the server's validator (``If-Range``: ETag or Last-Modified), so a file
  that changed on the server is downloaded whole again, never spliced; without a validator the
  download restarts.  DOWNLOAD_ATTEMPTS tries per command; the partial file stays in the cache
  for the next command.
* A file larger than MAX_DOWNLOAD is refused when announced and cut off when it is not.

The caller checks the bytes (sha256) and renames the partial file; this module never writes
under a final name.
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional, Tuple
from urllib.parse import urlsplit

from ..errors import BadInput, first_line, printable
from ..rules import limits

__all__ = ["Transfer", "download", "check_url", "is_loopback", "Progress", "discard", "shown"]

Progress = Callable[[int, Optional[int]], None]  # (bytes on disk, total or None)
CHUNK = 256 * 1024


def shown(url: str, width: int = 300) -> str:
    """``url`` for a message: without a user:password part or a query (signed addresses carry
    tokens there), printable, cut to ``width``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    text = f"{parts.scheme}://{netloc}{parts.path}" + ("?..." if parts.query else "")
    return printable(text)[:width]


def is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, came_from: Optional[str] = None) -> str:
    """``url`` when it may be fetched: https, or http to this machine; BadInput otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    via = f" (redirected from {shown(came_from)})" if came_from else ""
    try:
        _ = parts.port  # reading it validates the port
    except ValueError:
        raise BadInput(f"{shown(url)}: not a valid address (its port){via}") from None
    if "@" in parts.netloc:
        raise BadInput(f"{shown(url)}: a user or password in the address is not supported{via}",
                       hint="a private Hub repository takes HF_TOKEN")
    if scheme == "https" and parts.hostname:
        return url
    if scheme == "http" and is_loopback(parts.hostname):
        return url
    if scheme == "http":
        raise BadInput(f"{shown(url)}: plain http is refused{via}: the file could be "
                       f"changed on its way", hint="use the https:// address")
    raise BadInput(f"{shown(url)}: only https:// addresses are fetched{via}")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, bounded, and each new address held to :func:`check_url`."""

    max_redirections = limits.MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, came_from=req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class Transfer:
    """What a finished download did."""

    url: str  # where the bytes came from, after redirects
    size: int
    resumed_from: int = 0  # bytes of an earlier partial download that were kept


class _Broken(Exception):
    """A transfer that failed in a way a new try may fix (a dropped connection, a timeout)."""


def _part_state(part: str, url: str) -> Tuple[int, Optional[str]]:
    """(bytes of the partial file, its validator) when it can be resumed for ``url``; a
    partial file of another address, or without a validator, is removed."""
    try:
        with open(part + ".json", encoding="utf-8") as fh:
            state = json.load(fh)
        have = os.path.getsize(part)
    except (OSError, ValueError):
        state, have = None, 0
    if isinstance(state, dict) and state.get("url") == url and state.get("validator") and have:
        return have, str(state["validator"])
    discard(part)
    return 0, None


def discard(part: str) -> None:
    """Remove a partial file and its state."""
    for path in (part, part + ".json"):
        with contextlib.suppress(OSError):
            os.unlink(path)


def _content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    m = re.match(r"^\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) != "*" else None)


def _too_large(url: str, size: int, announced: bool) -> BadInput:
    how = "announces" if announced else "sent more than"
    return BadInput(f"{shown(url)} {how} {size:,} bytes, more than a checkpoint may "
                    f"have ({limits.MAX_DOWNLOAD:,}); nothing was cached")


def _open(url: str, have: int, validator: Optional[str], timeout: float):
    from .. import __version__

    headers = {"User-Agent": f"mobileone-cli/{__version__}", "Accept-Encoding": "identity"}
    if have and validator:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = validator
    opener = urllib.request.build_opener(_Redirects())
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (301, 302, 303, 307, 308):
            raise BadInput(f"{shown(url)}: more than {limits.MAX_REDIRECTS} redirects "
                           f"(or a redirect loop)") from None
        if exc.code == 416 and have:
            raise _Broken("the server refused to resume") from None
        if exc.code in (408, 429, 500, 502, 503, 504):
            raise _Broken(f"HTTP {exc.code} {exc.reason}") from None
        raise BadInput(f"{shown(url)}: HTTP {exc.code} {printable(exc.reason)[:80]}"
                       ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise _Broken(f"no answer within {timeout:g} s") from None
        if isinstance(reason, (socket.gaierror, ConnectionRefusedError)):
            raise BadInput(f"{shown(url)}: cannot connect "
                           f"({first_line(str(reason), 120)})",
                           hint="offline? --offline uses only the cache") from None
        raise _Broken(first_line(str(reason), 160)) from None
    except (socket.timeout, TimeoutError):
        raise _Broken(f"no answer within {timeout:g} s") from None
    except (http.client.HTTPException, OSError) as exc:
        raise _Broken(f"{type(exc).__name__}: {first_line(str(exc), 120)}") from None


def _transfer(url: str, part: str, timeout: float, progress: Optional[Progress]) -> Transfer:
    have, validator = _part_state(part, url)
    resp = _open(url, have, validator, timeout)
    with resp:
        total: Optional[int]
        if resp.status == 206 and have:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                discard(part)
                raise _Broken("the server resumed at the wrong place")
            kept = have
        elif resp.status == 200:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            kept = 0
            validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        else:
            raise BadInput(f"{shown(url)}: unexpected HTTP {resp.status}")
        if total is not None and total > limits.MAX_DOWNLOAD:
            discard(part)
            raise _too_large(url, total, True)
        os.makedirs(os.path.dirname(part), exist_ok=True)
        with open(part, "ab" if kept else "wb") as fh:
            if validator:
                with open(part + ".json", "w", encoding="utf-8") as state:
                    json.dump({"url": url, "validator": validator}, state)
            else:  # nothing to prove the server's file the same next time: no resume
                with contextlib.suppress(OSError):
                    os.unlink(part + ".json")
            done = kept
            if progress:
                progress(done, total)
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (socket.timeout, TimeoutError):
                    raise _Broken(f"no data for {timeout:g} s after {done:,} bytes") from None
                except (http.client.HTTPException, OSError) as exc:
                    raise _Broken(f"connection lost after {done:,} bytes "
                                  f"({type(exc).__name__})") from None
                if not chunk:
                    break
                done += len(chunk)
                if done > limits.MAX_DOWNLOAD:
                    fh.close()
                    discard(part)
                    raise _too_large(url, done, False)
                fh.write(chunk)
                if progress:
                    progress(done, total)
        if total is not None and done < total:
            raise _Broken(f"connection closed after {done:,} of {total:,} bytes")
        return Transfer(url=resp.geturl(), size=done, resumed_from=kept)


def download(url: str, part: str, *, timeout: float, attempts: int = limits.DOWNLOAD_ATTEMPTS,
             progress: Optional[Progress] = None) -> Transfer:
    """``url`` into ``part`` (resuming what is there); BadInput when it cannot be had."""
    check_url(url)
    reason = ""
    try:
        for attempt in range(max(1, attempts)):
            before = os.path.getsize(part) if os.path.exists(part) else 0
            try:
                return _transfer(url, part, timeout, progress)
            except _Broken as exc:
                reason = str(exc)
                grew = os.path.exists(part) and os.path.getsize(part) > before
                if attempt + 1 < attempts and not grew:
                    time.sleep(0.5)
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):  # an interrupted transfer may resume later
            discard(part)
        raise
    kept = os.path.getsize(part) if os.path.exists(part) else 0
    resumable = kept and os.path.exists(part + ".json")
    if not resumable:
        discard(part)
    tail = (f"; {kept:,} bytes are kept in the cache: run the command again to resume"
            if resumable else "; nothing was cached")
    raise BadInput(f"{shown(url)}: download failed after {attempts} tries "
                   f"({reason}){tail}")
