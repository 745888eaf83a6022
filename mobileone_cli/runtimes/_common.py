"""What the runtime modules share: optional imports with install hints, and silence.

The mobile toolchains are loud: torchao and torch's pytree log at import, TensorFlow's C++ core
and the LiteRT / ExecuTorch runtimes print from C++ straight to file descriptor 2, coremltools
shows progress bars.  The summary of ``export`` says everything that matters, so their output
is swallowed; a failure still becomes one error line through the exception it raises.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Iterator, Sequence

from ..errors import BadInput

__all__ = ["importable", "require", "quiet", "no_fd2", "disk_full", "write_program",
           "NOISY_LOGGERS"]

NOISY_LOGGERS = ("torch", "torch.onnx", "torch.utils._pytree", "torch._export", "onnxscript",
                 "onnx_ir", "torchao", "executorch", "coremltools", "litert_torch", "absl",
                 "jax", "tensorflow")
# Read by TensorFlow's C++ core and litert-torch when they load: set before any import.
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0",
              "LITERT_TORCH_SHOW_PROGRESS": "0", "TQDM_DISABLE": "1"}


def importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def require(packages: Sequence[str], hint: str) -> None:
    """BadInput naming what to install when any of ``packages`` cannot be imported (imported
    quietly: some announce themselves at import)."""
    with quiet():
        missing = [p for p in packages if not importable(p)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise BadInput(f"this needs {' and '.join(missing)}, which {verb} not installed",
                       hint=hint)


def write_program(path: str, content: bytes) -> None:
    """A program's bytes, made in memory, written by us rather than by the toolchain's own file
    writer (LiteRT's ends the process, exit 1 and no message, on a full disk): an OSError reaches
    the caller's atomic_write, which reports it and leaves nothing."""
    with open(path, "wb") as fh:
        fh.write(content)


def disk_full(exc: BaseException) -> None:
    """Raise ``OSError(ENOSPC)`` when an exporter failed because the disk is full (its own
    error type wrapping the OSError, or only its text): the writer then says so, exit 2."""
    import errno

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(errno.ENOSPC, "No space left on device") from None
        if "No space left on device" in str(exc)[:2000]:
            raise OSError(errno.ENOSPC, "No space left on device") from None
        exc = exc.__cause__ or exc.__context__
        seen += 1


def quiet_env() -> None:
    """The environment variables that keep TensorFlow and litert-torch quiet (not overriding
    what the user set)."""
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)


@contextlib.contextmanager
def no_fd2() -> Iterator[None]:
    """Mute file descriptor 2 (C/C++ writes that Python's sys.stderr never sees)."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a daemon): nothing to mute
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def quiet(fd: bool = True) -> Iterator[None]:
    """Swallow prints, warnings and log lines of the toolchains (and, with ``fd``, C-level
    writes to stderr) for the duration of the block."""
    quiet_env()
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), \
                contextlib.redirect_stderr(buf), (no_fd2() if fd else contextlib.nullcontext()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
