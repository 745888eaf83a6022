"""Block pattern files (``--blocks``): read with the byte cap of every text input, then parsed
by :mod:`mobileone_cli.arch.blocks_file`."""
from __future__ import annotations

import os
from typing import Tuple

from ..arch.blocks import BlockPattern
from ..arch.blocks_file import blocks_from_text
from ..arch.config import MAX_CONFIG_BYTES
from .text import read_text

__all__ = ["load_blocks"]


def load_blocks(path: str) -> Tuple[BlockPattern, ...]:
    """The patterns a ``--blocks`` YAML file describes; BadInput naming the field on a problem."""
    path = os.fspath(path)
    return blocks_from_text(read_text(path, "blocks file", cap=MAX_CONFIG_BYTES), path)
