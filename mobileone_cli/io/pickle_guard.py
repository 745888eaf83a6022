"""Python globals that no checkpoint needs: a pickle naming one is refused outright.

Weights-only loading never calls a refused global, and the placeholders of :mod:`safeload` are
inert, so no code from a file runs either way.  But a file whose pickle reaches for ``exec``,
``os.system`` or ``subprocess.Popen`` is an attack, not an mmengine checkpoint with a foreign
class: loading "what is safe" around it would hide that.  Such files are refused by name; only
``--trust-file`` (the user's explicit decision) opens them.  No torch needed.
"""
from __future__ import annotations

from typing import Iterable, List

from ..errors import BadInput

__all__ = ["CODE_MODULES", "DATA_BUILTINS", "python3_name", "is_code_global", "code_globals",
           "refuse_code_globals"]

# Modules whose globals run code, touch files, processes or the network, or call other callables.
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
# Builtins that only build plain data: harmless even if a file names them.
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
    """The names among ``names`` that are code globals, fully qualified, in order."""
    out = []
    for n in names:
        if is_code_global(n):
            real = python3_name(n)
            out.append(real if real == _full_name(n) else f"{real} (pickled as {n})")
    return out


def refuse_code_globals(names: Iterable[str], path: str) -> None:
    """BadInput naming the first code global among ``names``, if any."""
    bad = code_globals(names)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BadInput(f"{path}: refused to load: the file calls the Python global {bad[0]}"
                       f"{more}, which can run code; a checkpoint never needs it",
                       hint="this file may be malicious; only if you trust its source, pass "
                            "--trust-file")
