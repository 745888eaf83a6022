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
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, MobileOneError

COMMANDS = {
    "convert": "Fuse and/or remap a MobileOne checkpoint (Apple, mmpretrain, timm).",
    "verify": "Prove a deploy checkpoint computes the same function as a train checkpoint.",
    "stats": "Exact params and MACs/FLOPs, train vs deploy form.",
    "inspect": "Show what a checkpoint holds: layout, form, variant, classes, prefix.",
    "export": "Export a deploy model to ONNX and check it with onnxruntime.",
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
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("error: out of memory", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except Exception as exc:  # a bug: say so, never a bare traceback
            if debug:
                traceback.print_exc()
            click.echo(f"internal error: {exc.__class__.__name__}: {exc}".splitlines()[0][:300],
                       err=True)
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


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so no temp file is left behind."""
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    try:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    except (ValueError, OSError):  # not the main thread: leave the default
        pass
    cli.main(args=argv, prog_name="mobileone")


if __name__ == "__main__":  # pragma: no cover
    main()
