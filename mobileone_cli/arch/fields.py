"""Field-by-field validation of a parsed config: every message names the field path and quotes
the value briefly (a hostile config must not produce a megabyte error line).

This module never imports torch.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping, Optional, Sequence, Tuple

from ..errors import BadInput
from ..rules.limits import (
    MAX_BRANCHES,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_KERNEL,
    MAX_PAIRS,
    MAX_STAGES,
    check_bn_eps,
)

__all__ = ["Fields", "quote", "cut", "join", "type_name"]

MAX_QUOTED = 60  # characters of a value quoted in an error message
# Largest value of each integer field (rules/limits.py says why they are bounded).
INT_MAX = {"stem_channels": MAX_CHANNELS, "in_channels": MAX_CHANNELS, "widths": MAX_CHANNELS,
           "kernel_size": MAX_KERNEL, "num_classes": MAX_CLASSES, "blocks": MAX_PAIRS,
           "conv_branches": MAX_BRANCHES, "stem_conv_branches": MAX_BRANCHES,
           "se_blocks": MAX_PAIRS}


class Fields:
    """Validation helpers that name the field path in every message."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str, hint: Optional[str] = None) -> BadInput:
        return BadInput(f"{self.where}: {field}: {problem}", hint=hint)

    def mapping(self, value: Any, field: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be a mapping, not {type_name(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(field, f"keys must be text, not {type_name(k)} ({quote(k)})")
        return value

    def known(self, value: Mapping[str, Any], field: str, allowed: Sequence[str]) -> None:
        for k in value:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = (f"did you mean {close[0]!r}?" if close
                        else "known fields: " + ", ".join(allowed))
                raise self.fail(join(field, cut(k)), "unknown field", hint=hint)

    def integer(self, value: Any, field: str, minimum: int, name: str = "") -> int:
        """An int >= ``minimum`` and <= the limit of field ``name`` (default: the last part of
        ``field``)."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be an integer, not {type_name(value)} ({quote(value)})")
        if value < minimum:
            raise self.fail(field, f"must be >= {minimum}, not {quote(value)}")
        top = INT_MAX.get(name or field.rsplit(".", 1)[-1].split("[")[0])
        if top is not None and value > top:
            raise self.fail(field, f"is {quote(value)}, above the limit of {top:,}")
        return value

    def number(self, value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"must be a number, not {type_name(value)} ({quote(value)})")
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = float("inf")
        if not number > 0 or number != number or number == float("inf"):
            raise self.fail(field, f"must be a positive finite number, not {quote(value)}")
        return number

    def eps(self, value: Any, field: str) -> float:
        """A BatchNorm eps, held to the rule of ``--bn-eps`` (:func:`check_bn_eps`)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"must be a number, not {type_name(value)} ({quote(value)})")
        return check_bn_eps(value, option=f"{self.where}: {field}")

    def int_list(self, value: Any, field: str, minimum: int, name: str = "") -> Tuple[int, ...]:
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list (one entry per stage), not {type_name(value)}")
        if len(value) > MAX_STAGES:
            raise self.fail(field, f"has {len(value)} entries; a MobileOne has at most "
                                   f"{MAX_STAGES} stages")
        name = name or field.rsplit(".", 1)[-1]
        return tuple(self.integer(v, f"{field}[{i}]", minimum, name) for i, v in enumerate(value))

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"must be non-empty text, not {type_name(value)} "
                                   f"({quote(value)})")
        return cut(value.strip())


def type_name(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number",
            str: "text", list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def quote(value: Any) -> str:
    """A value as it may appear in a one-line error: repr, shortened, never expanded at length
    (YAML aliases make a 400-byte list whose full repr is gigabytes: the repr is bounded in
    depth and width while it is made, not cut afterwards)."""
    if isinstance(value, (list, dict, tuple)):
        return f"{type_name(value)} of {len(value)} entries" if len(value) > 8 else \
            cut(_bounded_repr(value))
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "an integer of more than 19 digits"
    return cut(_bounded_repr(value))


def _bounded_repr(value: Any) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxlevel = 3
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = 8
    r.maxstring = r.maxother = MAX_QUOTED
    r.maxlong = 40
    return r.repr(value)


def cut(text: str) -> str:
    """``text`` on one line, at most MAX_QUOTED characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key
