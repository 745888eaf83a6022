"""``mobileone fetch NAME... [--list]``: official checkpoints into the cache, checked."""
from __future__ import annotations

from typing import Optional, Tuple

import click

from ._options import json_option
from ._sources import cache_dir_option, offline_option, sha256_option


@click.command(help="Download checkpoints by name into the cache (or find them there) and check "
                    "their sha256: apple:s0..s4 (unfused, train form), apple:s0-fused..s4-fused, "
                    "mmpretrain:s0..s4, timm:s0..s4, hf-hub:OWNER/REPO[@REV][/FILE], https://... "
                    "Every command that reads a checkpoint takes these names too; fetch gets "
                    "them ahead of time. --list shows the known names and what each holds.")
@click.argument("names", nargs=-1, metavar="NAME...")
@click.option("--list", "show_list", is_flag=True,
              help="List the known names: variant, layout, form, sha256 prefix, cached or not.")
@click.option("--force", is_flag=True,
              help="Download again even when the cache has the file (a changed cache file is "
                   "replaced).")
@offline_option()
@cache_dir_option()
@sha256_option()
@json_option()
def fetch(names: Tuple[str, ...], show_list: bool, force: bool, offline: bool,
          cache_dir: Optional[str], sha256: Optional[str], as_json: bool) -> int:
    from ..errors import BadInput
    from ..io.cache import check_sha256_pin
    from ..io.remote import FetchSettings
    from ..jobs.fetch import fetch_names, list_known
    from ..render.console import emit
    from ..render.fetch import (
        download_bar,
        fetch_to_dict,
        known_to_dict,
        render_fetch,
        render_known,
    )

    settings = FetchSettings(cache_dir=cache_dir, offline=True if offline else None,
                             sha256=check_sha256_pin(sha256), force=force,
                             progress=download_bar())
    if show_list:
        if names or force or sha256:
            raise BadInput("--list takes no names, --force or --sha256")
        emit(list_known(settings), as_json, known_to_dict, render_known)
        return 0
    if force and settings.is_offline:
        raise BadInput("--force downloads again, which --offline forbids: give one")
    emit(fetch_names(names, settings), as_json, fetch_to_dict, render_fetch)
    return 0
