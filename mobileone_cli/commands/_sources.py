"""Checkpoint arguments that may name a checkpoint instead of a file: ``apple:s0``,
``apple:s0-fused``, ``mmpretrain:s0``, ``timm:s0``, ``hf-hub:REPO[@REV][/FILE]``, ``https://...``.

:func:`fetch_options` adds ``--offline``, ``--cache-dir`` and ``--sha256`` to a command and, before
the command runs, replaces each named checkpoint by its checked file in the cache (downloading it
with a bar on stderr when needed).  The command itself only ever sees local paths.
"""
from __future__ import annotations

import functools
import os
from typing import Any, List, Optional, Tuple

import click

from ..errors import BadInput

__all__ = ["fetch_options", "offline_option", "cache_dir_option", "sha256_option"]

NAMES_HELP = ("apple:s0, apple:s0-fused, mmpretrain:s0, timm:s0, hf-hub:REPO[@REV][/FILE] or "
              "an https:// address")


def offline_option():
    return click.option("--offline", is_flag=True,
                        help=f"Named checkpoints ({NAMES_HELP}) come from the cache only; "
                             f"nothing is downloaded (also MOBILEONE_OFFLINE=1).")


def cache_dir_option():
    return click.option("--cache-dir", "cache_dir", type=click.Path(file_okay=False),
                        default=None, metavar="DIR",
                        help="Cache of downloaded checkpoints (default: MOBILEONE_CACHE, else "
                             "$XDG_CACHE_HOME/mobileone, else ~/.cache/mobileone).")


def sha256_option():
    return click.option("--sha256", "sha256", default=None, metavar="HEX",
                        help="The sha256 (64 hex digits) the input must have: a download that "
                             "differs is refused and not cached.")


def _inputs(kwargs: dict, names: tuple, keep_last: bool) -> List[tuple]:
    """(argument, index or None, value) of every checkpoint the command was given."""
    out: List[Tuple[str, Optional[int], Any]] = []
    for name in names:
        value = kwargs.get(name)
        if isinstance(value, (tuple, list)):
            count = len(value) - 1 if keep_last else len(value)
            if keep_last and len(value) < 2:  # no DST: the command says what is missing
                count = 0
            out += [(name, i, value[i]) for i in range(count)]
        elif value is not None:
            out.append((name, None, value))
    return out


def _pin_local(path: str, pin: str) -> None:
    from ..io.cache import file_sha256

    if not os.path.isfile(path):
        raise BadInput(f"--sha256 pins one file; {path} is not a file")
    actual = file_sha256(path)
    if actual != pin:
        raise BadInput(f"{path}: sha256 {actual[:16]}..., but --sha256 pins {pin[:16]}...")


def resolve_inputs(kwargs: dict, names: tuple, keep_last: bool, offline: bool,
                   cache_dir: Optional[str], sha256: Optional[str]) -> None:
    """Replace, in ``kwargs``, every named checkpoint by its checked cache file."""
    from ..io.cache import check_sha256_pin
    from ..io.remote import FetchSettings, resolve
    from ..render.fetch import download_bar, render_fetched_note

    pin = check_sha256_pin(sha256)
    inputs = _inputs(kwargs, names, keep_last)
    if pin is not None and len(inputs) != 1:
        raise BadInput(f"--sha256 pins one input; {len(inputs)} were given")
    settings = FetchSettings(cache_dir=cache_dir, offline=True if offline else None, sha256=pin,
                             progress=download_bar())
    for name, index, value in inputs:
        fetched = resolve(value, settings)
        if fetched is None:
            if pin is not None:
                _pin_local(value, pin)
            continue
        render_fetched_note(fetched)
        if index is None:
            kwargs[name] = fetched.path
        else:
            values = list(kwargs[name])
            values[index] = fetched.path
            kwargs[name] = type(kwargs[name])(values)


def fetch_options(*names: str, keep_last: bool = False):
    """``--offline``, ``--cache-dir`` and ``--sha256``, and the command's checkpoint arguments
    ``names`` (single values, tuples, or a tuple whose last item is an output: ``keep_last``)
    resolved to local files before the command runs."""

    def decorate(command):
        @functools.wraps(command)
        def run(*args: Any, offline: bool, cache_dir: Optional[str], sha256: Optional[str],
                **kwargs: Any):
            resolve_inputs(kwargs, names, keep_last, offline, cache_dir, sha256)
            return command(*args, **kwargs)

        for option in (sha256_option(), cache_dir_option(), offline_option()):
            run = option(run)
        return run

    return decorate
