"""Reading a YAML model config file: bounded in size, aliases and nesting, then validated by
:func:`mobileone_cli.arch.config.parse_config` (the schema).  Every problem is one line that
names the file.  This module never imports torch.
"""
from __future__ import annotations

import os
from typing import Any

from ..arch.config import parse_config
from ..arch.fields import cut
from ..arch.specs import ArchSpec
from ..errors import BadInput
from ..rules.limits import MAX_ALIASES, MAX_CONFIG_BYTES

__all__ = ["load_config", "read_yaml"]


def read_yaml(text: str, path: str) -> Any:
    """yaml.safe_load, bounded: no alias bombs, no nesting that exhausts the stack, no huge ints."""
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):  # every alias (*ref) passes through here
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_ALIASES:
                    raise BadInput(f"{path}: more than {MAX_ALIASES} YAML aliases; a model "
                                   f"config needs none")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise BadInput(f"{path}: unreadable YAML{where}: {cut(str(problem))}") from None
    except RecursionError:
        raise BadInput(f"{path}: YAML nested too deeply for a model config") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadInput(f"{path}: unreadable YAML: {cut(str(exc))}") from None


def load_config(path: str) -> ArchSpec:
    """The ArchSpec a YAML model config describes; BadInput naming the field on any problem."""
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such config file")
    if os.path.isdir(path):
        raise BadInput(f"{path}: is a directory, not a YAML config file")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise BadInput(f"{path}: {os.path.getsize(path):,} bytes; a model config is at most "
                       f"{MAX_CONFIG_BYTES:,}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file (YAML must be UTF-8)") from None
    data = read_yaml(text, path)
    stem = os.path.basename(path)
    if stem.lower().endswith((".yaml", ".yml")):
        stem = stem.rsplit(".", 1)[0]
    return parse_config(data, where=path, default_name=stem or "custom")
