"""Model config files (``--config``): read with the byte cap of every text input, then parsed
by :mod:`mobileone_cli.arch.config`."""
from __future__ import annotations

import os

from ..arch.config import MAX_CONFIG_BYTES, config_from_text
from ..arch.specs import ArchSpec
from .text import read_text

__all__ = ["load_config"]


def load_config(path: str) -> ArchSpec:
    """The ArchSpec a YAML model config describes; BadInput naming the field on any problem."""
    path = os.fspath(path)
    return config_from_text(read_text(path, "model config", cap=MAX_CONFIG_BYTES), path)
