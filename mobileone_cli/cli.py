"""The ``mobileone`` command group.

Commands live in ``mobileone_cli.commands.<name>`` and are imported only when run (or when help
lists them), and no command module imports torch at import time: ``mobileone --help`` stays fast.
Every error reaches the user as one line on stderr with a documented exit code:
0 ok, 1 verification failed, 2 bad input or usage, 3 internal error.
"""
from __future__ import annotations

import importlib
import signal
import traceback
from typing import List, Optional

import click

from . import __version__
from .errors import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, MobileOneError, first_line,
                     printable)

COMMANDS = {
    "convert": "Fuse and/or remap a MobileOne checkpoint (Apple, mmpretrain, timm).",
    "verify": "Prove a deploy checkpoint computes the same function as a train checkpoint.",
    "stats": "Exact params and MACs/FLOPs, train vs deploy form.",
    "inspect": "Show what a checkpoint holds: layout, form, variant, classes, prefix.",
    "export": "Export to ONNX, ExecuTorch, LiteRT or Core ML, checked in that runtime.",
    "demo": "Convert and verify a built-in synthetic s0 checkpoint (no download).",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on demand, with one error policy for all."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return [name for name in COMMANDS if self._module(name) is not None]

    @staticmethod
    def _module(name: str):
        try:
            return importlib.import_module(f"mobileone_cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mobileone_cli.commands.{name}":
                return None
            raise

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in COMMANDS:
            return None
        module = self._module(name)
        return getattr(module, name, None) if module is not None else None

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except MobileOneError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {printable(exc.message)}", err=True)
            if exc.hint:
                click.echo(f"hint: {printable(exc.hint)}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo(f"interrupted; {_written()}", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except MemoryError:
            click.echo("error: out of memory: the input asks for more memory than this machine "
                       "has; nothing was written", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except Exception as exc:  # a bug: say so, never a bare traceback
            if debug:
                traceback.print_exc()
            click.echo(printable(f"internal error: {exc.__class__.__name__}: "
                                 f"{first_line(str(exc), 300)}"), err=True)
            click.echo("hint: this is a bug in mobileone; please report it with the output of "
                       "the same command run with --debug", err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mobileone")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
def cli(debug: bool) -> None:
    """Convert MobileOne training checkpoints into deploy checkpoints, and prove them right.

    Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 internal error.
    """


def _written() -> str:
    """What an interrupted run leaves behind, as it happened."""
    from .io.write import published

    if not published:
        return "nothing was written"
    return "already written: " + ", ".join(printable(p) for p in published)


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM/SIGHUP (kill, a CI timeout, a closed terminal) unwind like Ctrl-C, so no temp
    file is left behind."""
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        try:
            if sig is not None:
                signal.signal(sig, _terminate_as_interrupt)
        except (ValueError, OSError):  # not the main thread: leave the default
            pass
    try:
        cli.main(args=argv, prog_name="mobileone")
    finally:
        # The work is done (or reported): a Ctrl-C during interpreter exit must not print a
        # traceback over the result or change the exit code.
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (ValueError, OSError):
                pass


if __name__ == "__main__":  # pragma: no cover
    main()
