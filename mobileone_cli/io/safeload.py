"""Weights-only loading that survives foreign objects without running any of their code.

mmengine checkpoints keep ``message_hub`` (HistoryBuffer objects, numpy arrays) next to the weights;
``torch.load(weights_only=True)`` refuses the whole file because of them (mmengine issue 1655).
Instead of trusting the file, each refused global is replaced by an inert :class:`Placeholder`
subclass registered under the refused name, and the weights-only load is retried: the tensors load,
the foreign objects become placeholders that only remember their arguments, and nothing from the
named modules is imported or called.  Modules torch blocks outright (``os``, ``sys``...) cannot be
stubbed; such files need the explicit ``--trust-file`` opt-in.

Torch is imported only inside the functions.
"""
from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["Placeholder", "make_stub", "stubbable_global", "load_with_stubs", "plain_data",
           "MAX_STUBS"]

MAX_STUBS = 256  # a file naming more foreign globals than this is not a checkpoint we can help

_REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
# A placeholder standing for a dict or list subclass cannot take items: the unpickler only fills
# real dicts and lists.  Such a global is then loaded as a plain dict or list instead.
_CONTAINER = re.compile(r"Can only (SETITEMS?|append|extend)\b.*?but got <class '"
                        + re.escape(__name__) + r"\.Placeholder\[(.+?)\]'>", re.S)


class Placeholder:
    """Stands in for an object of a class the file names but that is never imported or run.

    It accepts whatever the pickle hands it (constructor arguments, ``__setstate__`` state) and
    keeps it, so the rest of the file (the tensors) can be read.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<placeholder for {self.global_name}>"


def make_stub(global_name: str) -> type:
    """A fresh Placeholder subclass standing for ``global_name`` ('pkg.module.Class')."""
    short = global_name.rsplit(".", 1)[-1] or "Stub"
    return type(short, (Placeholder,), {"global_name": global_name, "__module__": __name__,
                                         "__qualname__": f"Placeholder[{global_name}]"})


def stubbable_global(message: str) -> Optional[str]:
    """The global named by a weights-only refusal, or None when a stub cannot help.

    torch prints ``builtins.X`` as plain ``X`` in that message; the lookup uses the full name.
    A module on torch's block list ('... whose module os is blocked') never matches.
    """
    m = _REFUSED.search(message)
    if not m:
        return None
    name = m.group(1)
    return name if "." in name else f"builtins.{name}"


def _unsafe_globals(path: str) -> List[str]:
    """Every refused global of a zip checkpoint, read statically (torch >= 2.5); [] if unknown."""
    import torch

    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        names = finder(path)
    except Exception:  # only a hint: the retry loop below finds the globals one by one anyway
        return []
    blocked = {"os", "sys", "posix", "nt"}
    return sorted(n for n in names if n.split(".", 1)[0] not in blocked)


def load_with_stubs(path: str, *, mmap: bool = False) -> Tuple[Any, List[str]]:
    """(object, names of the globals replaced by placeholders) of a torch file, weights-only.

    Raises ``pickle.UnpicklingError`` (like ``torch.load``) when placeholders cannot help.
    """
    import pickle

    import torch

    stubs: Dict[str, type] = {}
    can_stub = hasattr(torch.serialization, "safe_globals")  # torch >= 2.5 takes (obj, name)
    while True:
        try:
            with torch.serialization.safe_globals([(c, n) for n, c in stubs.items()]) \
                    if stubs else contextlib.nullcontext():
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            return obj, sorted(stubs)
        except pickle.UnpicklingError as exc:
            if not (can_stub and _learn(str(exc), stubs, path)):
                raise


def _learn(message: str, stubs: Dict[str, type], path: str) -> bool:
    """Update ``stubs`` from one refusal; False when another attempt cannot do better."""
    container = _CONTAINER.search(message)
    if container:
        name = container.group(2)
        if not (isinstance(stubs.get(name), type) and issubclass(stubs[name], Placeholder)):
            return False
        stubs[name] = list if container.group(1) in ("append", "extend") else dict
        return True
    name = stubbable_global(message)
    if name is None or name in stubs or len(stubs) >= MAX_STUBS:
        return False
    # First refusal: ask for every refused global at once (zip files), to retry only once.
    for n in [name] + (_unsafe_globals(path) if not stubs else []):
        stubs.setdefault(n, make_stub(n))
    return True


def plain_data(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every placeholder replaced by a short string, so it can be saved and read back
    by weights-only loading (used for the ``meta`` carried into an mmpretrain output)."""
    if isinstance(obj, Placeholder):
        return f"<not loaded: {obj.global_name}>"
    if depth > 50:
        return "<too deep>"
    if isinstance(obj, dict):
        items = ((k, plain_data(v, depth + 1)) for k, v in obj.items())
        return OrderedDict(items) if type(obj) is OrderedDict else dict(items)
    if type(obj) in (list, tuple):
        return type(obj)(plain_data(v, depth + 1) for v in obj)
    return obj
