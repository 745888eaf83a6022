"""The guard between a torch file and the tool: weights-only loading by :mod:`safeload`'s rule,
code globals refused by name, a file the user named as trusted (:mod:`.trust`) as the only one
whose pickle may run.

Weights-only loading never calls a refused global and the placeholders are inert, so no code
from a file runs either way.  But a file whose pickle reaches for ``exec``, ``os.system`` or
``subprocess.Popen`` (directly, or through ``getattr`` on something that is not a placeholder
class) is an attack, not a training checkpoint with a foreign class: loading "what is safe"
around it would hide that.  Such files are refused by name; only naming the file as trusted
(``mobileone --trust-file FILE COMMAND ...``, the user's explicit decision) opens them.
"""
from __future__ import annotations

import struct
from typing import Any, Iterable, List, Optional, Tuple

from ..errors import BadInput, first_line, raised_in_package

# Exceptions that, raised by this package's own code while it reads a file, mean a bug in it.
PROGRAMMING_ERRORS = (AttributeError, TypeError, AssertionError, KeyError, IndexError)

__all__ = ["TRUST_HINT", "CODE_MODULES", "DATA_BUILTINS", "python3_name", "is_code_global",
           "code_globals",
           "refuse_code_globals", "load_torch"]

TRUST_HINT = "`mobileone --trust-file FILE COMMAND ...` or MOBILEONE_TRUST=FILE"

# Modules whose globals run code, touch files, processes or the network, or call other callables.
# builtins.getattr is one of them by name; safeload answers it with an inert stand-in instead,
# and only its misuse ('builtins.getattr (on ...)') comes back here to be refused.
CODE_MODULES = (
    "builtins", "__builtin__", "os", "posix", "nt", "sys", "subprocess", "shutil", "socket",
    "importlib", "imp", "runpy", "pickle", "_pickle", "cPickle", "dill", "marshal", "types", "code",
    "codeop", "ctypes", "pty", "webbrowser", "multiprocessing", "concurrent", "signal",
    "operator", "_operator", "functools", "itertools", "io", "_io", "pathlib", "tempfile", "glob",
    "asyncio", "threading", "_thread", "platform", "pdb", "bdb", "timeit", "trace", "cProfile",
    "profile", "zipimport", "pkgutil", "inspect", "ast", "gc", "urllib", "http", "ftplib",
    "smtplib", "telnetlib", "requests", "httpx", "logging", "sqlite3", "shelve", "dbm",
    "torch.hub", "torch.jit", "torch.package", "torch.utils.cpp_extension", "torch.load",
    "torch.serialization", "torch._C._jit", "numpy.load", "numpy.testing", "numpy.f2py",
    "numpy.distutils", "setuptools", "distutils", "pip", "site", "yaml", "jinja2",
)
# Builtins that only build plain data: harmless even if a file names them (they load as
# placeholders like any foreign global, or as torch's own when torch allows them).
DATA_BUILTINS = frozenset({
    "builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.bytes",
    "builtins.complex", "builtins.slice", "builtins.range", "builtins.tuple", "builtins.list",
    "builtins.dict", "builtins.int", "builtins.float", "builtins.str", "builtins.bool",
})


def _full_name(name: str) -> str:
    """torch prints builtins without their module ('exec'); give them one."""
    return name if "." in name else f"builtins.{name}"


def python3_name(name: str) -> str:
    """The global an unpickler would really import for ``name``.

    Pickle protocol 2 (torch.save's) writes Python 2 names that unpicklers map back:
    ``commands.Popen`` is ``subprocess.Popen``, ``__builtin__.eval`` is ``builtins.eval``.
    """
    import _compat_pickle

    module, _, attr = _full_name(name).rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{attr}"


def is_code_global(name: str) -> bool:
    """True for a global that can run code (or reach something that can)."""
    full = python3_name(name)
    if full in DATA_BUILTINS:
        return False
    return any(full == m or full.startswith(m + ".") for m in CODE_MODULES)


def code_globals(names: Iterable[str]) -> List[str]:
    """The names among ``names`` that are code globals, fully qualified, in order.

    A name may carry a note in parentheses (``builtins.getattr (applied to ...)``); it is kept.
    """
    out = []
    for n in names:
        name, sep, note = n.partition(" ")
        if is_code_global(name):
            real = python3_name(name)
            shown = real if real == _full_name(name) else f"{real} (pickled as {name})"
            out.append(shown + sep + note)
    return out


def refuse_code_globals(names: Iterable[str], path: str) -> None:
    """BadInput naming the first code global among ``names``, if any."""
    bad = code_globals(names)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BadInput(f"{path}: refused to load: the file calls the Python global {bad[0]}"
                       f"{more}, which can run code; a checkpoint never needs it",
                       hint="this file may be malicious; only if you trust its source, name it: "
                            + TRUST_HINT)


def load_torch(path: str, *, trusted: Any = None) -> Tuple[Any, List[str]]:
    """(object, globals read as placeholders) of a torch file; BadInput (exit 2) if it cannot be
    read without running its code.  Only ``trusted`` (what :func:`.trust.open_trusted` gave for
    a file the user named) is unpickled in full, which can run code."""
    import pickle

    from .safeload import load_inert, refused_global

    try:
        if trusted is not None:
            return _trusted_load(path, trusted), []
        # No mmap: each tensor then owns its memory, so a conversion that consumes the state
        # dict block by block gives memory back as it goes (peak RSS near load+save).
        loaded = load_inert(path, vet=lambda names: refuse_code_globals(names, path))
        return loaded.obj, loaded.placeholders
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        glob = refused_global(msg)
        if glob:
            refuse_code_globals([glob], path)
            raise BadInput(f"{path}: refused to load: the file needs the Python global {glob}, "
                           f"which weights-only loading does not allow",
                           hint="if you trust this file, name it: " + TRUST_HINT) from None
        detail = _weights_only_detail(msg)
        if detail:
            raise BadInput(f"{path}: weights-only loading failed, even with placeholders for "
                           f"foreign objects ({detail})",
                           hint="if you trust this file, name it: " + TRUST_HINT) from None
        raise BadInput(f"{path}: not a loadable checkpoint ({first_line(msg)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError,
            IndexError, TypeError, UnicodeDecodeError, struct.error, ImportError,
            AssertionError, OverflowError, NotImplementedError, RecursionError) as exc:
        # torch's unpickler reports a damaged legacy file with any of these; raised by our own
        # loading code, the programming errors among them are bugs (exit 3), not bad files.
        if isinstance(exc, PROGRAMMING_ERRORS) and raised_in_package(exc):
            raise
        reason = first_line(str(exc)) or exc.__class__.__name__
        if "zip archive" in reason or "central directory" in reason or isinstance(exc, EOFError):
            reason = "truncated or corrupt file: " + reason
        raise BadInput(f"{path}: cannot load checkpoint ({reason})") from None


def _trusted_load(path: str, source: Any) -> Any:
    """A trusted file: plain unpickling of ``source`` (its path, or its open file or bytes), which
    may run code from the file (the user named it)."""
    import pickle

    import torch

    try:
        return torch.load(source, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, ImportError, AttributeError) as exc:
        if isinstance(exc, PROGRAMMING_ERRORS) and raised_in_package(exc):
            raise
        hint = None
        if isinstance(exc, ImportError):  # e.g. mmengine is not installed here
            hint = ("without trusting it, objects of packages that are not installed load as "
                    "inert placeholders")
        raise BadInput(f"{path}: cannot load checkpoint even as a trusted file "
                       f"({first_line(str(exc)) or exc.__class__.__name__})", hint=hint) from None


def _weights_only_detail(msg: str) -> Optional[str]:
    """What torch's weights-only refusal says was refused (the text after 'WeightsUnpickler
    error:', which torch puts at the end of a line or on the lines after it)."""
    if "Weights only load failed" not in msg or "WeightsUnpickler error" not in msg:
        return None
    rest = msg.split("WeightsUnpickler error", 1)[1].lstrip(":")
    lines = [ln.strip() for ln in rest.splitlines() if ln.strip()]
    return lines[0][:200] if lines else None
