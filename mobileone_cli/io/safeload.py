"""Weights-only loading of files that hold more than weights, without running any of their code.

Training libraries pickle bookkeeping next to the weights: mmengine's ``message_hub`` (HistoryBuffer
objects whose statistics functions are pickled as ``getattr(HistoryBuffer, 'min')``, numpy arrays
and scalars), timm's ``args`` (an ``argparse.Namespace``), Lightning's ``hyper_parameters``.
``torch.load(weights_only=True)`` refuses such files whole.  :func:`load_inert` keeps
weights-only loading as the engine and answers each global the pickle names by one rule:

1. torch's own allowlist (tensors, storages, dtypes, ``collections.OrderedDict``, ``set``,
   ``_codecs.encode``, with which pickle writes bytes): loaded by torch, as always.
2. numpy arrays, scalars and dtypes (``numpy[._]core.multiarray._reconstruct`` and ``.scalar``,
   ``numpy.ndarray``, ``numpy.dtype``): real numpy values, built by numpy from the bytes in the
   file; only a plain ``ndarray`` can be reconstructed.
3. ``builtins.getattr``: an inert stand-in.  On a placeholder class (how pickle protocol 2 writes
   a function or nested class, ``getattr(HistoryBuffer, 'min')``) it gives a placeholder class for
   ``HistoryBuffer.min``, never a real attribute.  On anything else it gives nothing real and
   reports the misuse, and the caller refuses the file naming ``builtins.getattr``.
4. A global of a module that can run code (:data:`pickle_guard.CODE_MODULES`: ``os``, ``posix``,
   ``subprocess``, ``builtins``, ``importlib``...): handed to ``vet`` (the caller refuses the
   file by name); without ``vet`` it becomes a placeholder like any other.
5. Any other global (``mmengine.*``, ``argparse.Namespace``...): a :class:`Placeholder` class
   registered under its name and never imported.  Calling or building it only records the
   arguments and state.  A placeholder that the pickle fills with items (a dict or list subclass)
   is replaced by a plain ``dict`` or ``list``.

So nothing the file names is imported or called except torch's rebuild functions, numpy's array
and scalar constructors, and the stand-ins above.  Torch is imported only inside the functions.
"""
from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..rules.limits import MAX_STUBS

__all__ = ["Placeholder", "make_stub", "refused_global", "load_inert", "Loaded", "MAX_STUBS"]


# torch's two refusals of a global: not allowed ('... GLOBAL x.y was not an allowed global ...')
# and blocked outright ('... unsupported GLOBAL os.system whose module os is blocked').
_REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"
                      r"|unsupported GLOBAL (\S+) whose module \S+ is blocked")
# A placeholder standing for a dict or list subclass cannot take items: the unpickler only fills
# real dicts and lists.  Such a global is then loaded as a plain dict or list instead.
_CONTAINER = re.compile(r"Can only (SETITEMS?|append|extend)\b.*?but got <class '"
                        + re.escape(__name__) + r"\.Placeholder\[(.+?)\]'>", re.S)
_session = threading.local()
# torch keeps allowed globals process-wide: loads in several threads take turns.
_LOCK = threading.Lock()


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


def refused_global(message: str) -> Optional[str]:
    """The global a weights-only refusal names, fully qualified, or None.

    torch prints ``builtins.X`` as plain ``X`` in its message; the name returned has its module.
    """
    m = _REFUSED.search(message)
    if not m:
        return None
    name = m.group(1) or m.group(2)
    return name if "." in name else f"builtins.{name}"


@dataclass
class Loaded:
    """What :func:`load_inert` read: the object, the globals of the file it read as
    placeholders (or as plain dicts and lists), and the misuses of getattr it answered with
    nothing (the file is refused for them when the caller vets)."""

    obj: Any
    placeholders: List[str] = field(default_factory=list)
    misuses: List[str] = field(default_factory=list)


@dataclass
class _Session:
    """The state of one load: its stubs (name -> class) and the misuses of getattr it saw."""

    stubs: Dict[str, type] = field(default_factory=dict)
    misuses: List[str] = field(default_factory=list)
    derived: set = field(default_factory=set)  # stubs made by getattr, not named by the file

    def stub(self, name: str) -> type:
        if name not in self.stubs:
            self.stubs[name] = make_stub(name)
            self.derived.add(name)
            import torch

            torch.serialization.add_safe_globals([(self.stubs[name], name)])
        return self.stubs[name]


def _inert_getattr(owner: Any, name: Any, *default: Any) -> Any:
    """``builtins.getattr`` as the unpickler sees it (rule 3): never a real attribute."""
    session: Optional[_Session] = getattr(_session, "current", None)
    if (session is not None and isinstance(owner, type) and issubclass(owner, Placeholder)
            and isinstance(name, str) and len(default) <= 1):
        return session.stub(f"{owner.global_name}.{name}")
    if session is not None:
        session.misuses.append(f"builtins.getattr (on {_describe(owner)}, not a placeholder "
                               f"class)")
    return make_stub("builtins.getattr")()  # an inert instance: nothing can be called through it


def _describe(obj: Any) -> str:
    """A short, code-free description of what getattr was applied to."""
    if isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder)):
        return f"a placeholder {'object' if isinstance(obj, Placeholder) else 'class'} for " \
               f"{obj.global_name}"
    if isinstance(obj, type) or callable(obj):
        name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
        return f"{'class' if isinstance(obj, type) else 'callable'} {name}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"


def _numpy_globals() -> List[Tuple[Any, str]]:
    """Rule 2: the numpy globals that rebuild arrays, scalars and dtypes, under both spellings
    (numpy 2 pickles ``numpy._core.multiarray``, numpy 1 ``numpy.core.multiarray``)."""
    import pickle

    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') + BUILD(state): the empty
        # array grows only from the bytes in the state.  Subclasses would run their own code.
        if subtype is not np.ndarray or shape != (0,):
            raise pickle.UnpicklingError(f"numpy reconstruct of {_describe(subtype)} with shape "
                                         f"{shape!r} is not a plain array")
        return multiarray._reconstruct(np.ndarray, (0,), dtype)

    out: List[Tuple[Any, str]] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for core in ("numpy._core", "numpy.core"):
        out += [(reconstruct, f"{core}.multiarray._reconstruct"),
                (multiarray.scalar, f"{core}.multiarray.scalar")]
    # A dtype is rebuilt as dtype(...) + BUILD(state): BUILD needs the dtype's own class.
    kinds = {type(np.dtype(c)) for c in np.typecodes["All"] + "OSUV"}
    out += [(k, f"numpy.dtypes.{k.__name__}") for k in kinds]
    return out


@contextlib.contextmanager
def _allowed(session: _Session) -> Iterator[None]:
    """Allow the fixed stand-ins and the session's stubs for one load; restore after."""
    import torch.serialization as ts

    with _LOCK:
        before = ts.get_safe_globals()
        ours = ([(_inert_getattr, "builtins.getattr")] + _numpy_globals()
                + [(c, n) for n, c in session.stubs.items()])
        try:
            ts.add_safe_globals(ours)
            _session.current = session
            yield
        finally:
            _session.current = None
            # Ours go (the stand-ins, and the stubs made during the load); what a library
            # imported meanwhile registered (torchao does) stays.
            ours += [(c, n) for n, c in session.stubs.items()]
            during = [g for g in ts.get_safe_globals() if g not in before and g not in ours]
            ts.clear_safe_globals()
            ts.add_safe_globals(before + during)


def _unsafe_globals(path: str) -> List[str]:
    """Every global of a zip checkpoint that torch would refuse, read statically; [] if unknown."""
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # only a head start: the loop in load_inert finds the globals one by one
        return []


def load_inert(path: str, vet: Optional[Callable[[Sequence[str]], None]] = None) -> Loaded:
    """Load a torch file weights-only by the rule of this module.

    ``vet(names)`` sees every global before it gets a placeholder and every misuse of getattr;
    it refuses the file by raising.  Raises ``pickle.UnpicklingError`` (as ``torch.load`` does)
    when placeholders cannot help.
    """
    import pickle

    import torch

    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: no (object, name) pairs
        return Loaded(torch.load(path, map_location="cpu", weights_only=True))
    session = _Session()
    with _allowed(session):
        first = _unsafe_globals(path)
    _learn_names(first, session, vet)
    while True:
        session.misuses.clear()
        try:
            with _allowed(session):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if vet is not None and session.misuses:
                vet(list(session.misuses))
            if not _learn(str(exc), session, vet):
                raise
            continue
        if vet is not None and session.misuses:
            vet(list(session.misuses))
        return Loaded(obj, sorted(set(session.stubs) - session.derived), list(session.misuses))


def _learn_names(names: Sequence[str], session: _Session,
                 vet: Optional[Callable[[Sequence[str]], None]]) -> bool:
    new = [n for n in names if n not in session.stubs]
    if not new or len(session.stubs) + len(new) > MAX_STUBS:
        return False
    if vet is not None:
        vet(new)
    for n in new:
        session.stubs[n] = make_stub(n)
    return True


def _learn(message: str, session: _Session,
           vet: Optional[Callable[[Sequence[str]], None]]) -> bool:
    """Update the session from one refusal; False when another attempt cannot do better."""
    container = _CONTAINER.search(message)
    if container:
        name = container.group(2)
        stub = session.stubs.get(name)
        if not (isinstance(stub, type) and issubclass(stub, Placeholder)):
            return False
        session.stubs[name] = list if container.group(1) in ("append", "extend") else dict
        return True
    name = refused_global(message)
    if name is None:
        return False
    if name in session.stubs:  # stubbed and still refused: torch blocks the module outright
        if vet is not None:
            vet([name])
        return False
    return _learn_names([name], session, vet)
