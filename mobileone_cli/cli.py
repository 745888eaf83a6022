"""The ``mobileone`` command group.

Commands live in ``mobileone_cli.commands.<name>`` and are imported only when run (or when help
lists them), and no command module imports torch at import time: ``mobileone --help`` stays fast.
Every error reaches the user as one line on stderr (``error: ...``, then an optional
``hint: ...``) with a documented exit code: 0 ok, 1 verification failed, 2 bad input or usage
(a failed allocation included: the input asked for more memory than the machine has),
3 internal error, 130 interrupted.  Text quoted from the user or from files is shown with its
control characters escaped, so no message can forge a line or drive the terminal.
"""
from __future__ import annotations

import importlib
import sys
import traceback
from typing import Iterable, List, Optional

import click

from . import __version__
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    MobileOneError,
    exit_code_of,
    first_line,
    one_line,
    printable,
)

COMMANDS = {
    "convert": "Fuse and/or remap a MobileOne checkpoint (Apple, mmpretrain, timm).",
    "verify": "Prove a deploy checkpoint computes the same function as a train checkpoint.",
    "stats": "Exact params and MACs/FLOPs, train vs deploy form.",
    "inspect": "Show what a checkpoint (or ONNX file) holds, and the health of its numbers.",
    "export": "Export to ONNX, ExecuTorch, LiteRT or Core ML, checked in that runtime.",
    "eval": "Accuracy on labelled images: train vs deploy vs exported files, one pass.",
    "quant": "int8 readiness: per-block quantization error, and a checked int8 .pte.",
    "demo": "Convert and verify a built-in synthetic s0 checkpoint (no download).",
    "fetch": "Download official checkpoints by name (apple:s0, ...) into a checked cache.",
}


# Options of the whole tool, accepted before or after the subcommand.
GLOBAL_FLAGS = ("--debug", "-q", "--quiet", "-v", "--verbose")


def closest(word: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate nearest to ``word`` if it is a plausible typo of it, else None (difflib's
    similarity, the rule config fields use too)."""
    import difflib

    near = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.75)
    return near[0] if near else None


def _wants_json(ctx: click.Context) -> bool:
    rest = list(ctx.args) + list(getattr(ctx, "_protected_args", []) or [])
    return "--json" in rest


def _progress(wants_json: bool):
    """Progress of the command's slow steps on a terminal stderr (never with -q or --json)."""
    from .render.console import quiet
    from .render.progress import shown

    return shown(enabled=not wants_json and not quiet())


class LazyGroup(click.Group):
    """A group whose subcommands are imported on demand, with one error policy for all."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        # --debug after the subcommand is the tool's option too.
        args = list(args)
        cut = args.index("--") if "--" in args else len(args)
        from .commands._options import option_like_files

        self.forged = option_like_files(args)
        moved = [a for a in args[:cut] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:cut] if a not in GLOBAL_FLAGS] + args[cut:]
        return super().parse_args(ctx, moved + rest)

    def resolve_command(self, ctx: click.Context, args: List[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            near = closest(name, COMMANDS)
            hint = f" Did you mean {near!r}?" if near else ""
            raise click.UsageError(f"No such command {name!r}.{hint}", ctx)
        return super().resolve_command(ctx, args)

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
        command = getattr(module, name, None) if module is not None else None
        if command is not None and not command.short_help:
            command.short_help = COMMANDS[name]  # `mobileone --help` lists whole sentences
        return command

    def main(self, args=None, *more, **extra):
        self.argv = list(sys.argv[1:] if args is None else args)  # what was asked, for messages
        return super().main(args, *more, **extra)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx: click.Context):
        import contextlib

        from .io.published import recording_writes
        from .render.console import output_session

        debug = bool(ctx.params.get("debug"))
        wants_json = _wants_json(ctx)  # read before click hands the arguments to the command
        level = _verbosity(ctx)
        run = contextlib.ExitStack()  # what THIS command prints and writes
        output = run.enter_context(output_session(level))
        written = run.enter_context(recording_writes())
        try:
            from .commands._options import refuse_option_like_files

            refuse_option_like_files(getattr(self, "forged", []))
            with _progress(wants_json):
                return super().invoke(ctx)
        except MobileOneError as exc:
            if debug:
                traceback.print_exc()
            lost = type(exc).__name__ == "OutputLost"  # stdout failed: say what is on disk
            if lost or not exc.shown:  # a verdict the report printed is not repeated
                said = f"; {_written(written)}" if lost else ""
                click.echo(f"error: {one_line(exc.message)}{said}", err=True)
            if exc.hint:
                click.echo(f"hint: {one_line(exc.hint)}", err=True)
            if wants_json and not output.json_documents:  # a script reading --json gets JSON, once
                from .render.console import json_text

                click.echo(json_text({"error": exc.message, "hint": exc.hint,
                                      "exit_code": exc.exit_code}))
            ctx.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.NoSuchOption as exc:
            command = exc.ctx.command if exc.ctx is not None else None
            names = [o for p in getattr(command, "params", []) for o in p.opts + p.secondary_opts
                     if o.startswith("-")]
            near = closest(exc.option_name, names)
            exc.possibilities = [near] if near else []  # type: ignore[misc]  # click's Final
            raise _usage_error(exc) from None
        except click.UsageError as exc:
            raise _usage_error(exc) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo(f"interrupted; {_written(written)}", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:  # MemoryError included
            if debug:
                traceback.print_exc()
            if exit_code_of(exc) == EXIT_BAD_INPUT:  # a failed allocation
                click.echo(printable(f"error: out of memory: `{self._asked()}` asks for more "
                                     f"memory than this machine has ({_allocation(exc)}); "
                                     f"{_written(written)}"), err=True)
                click.echo("hint: use a smaller --batch or --input-size, or a smaller network",
                           err=True)
                ctx.exit(EXIT_BAD_INPUT)
            # a bug: say so, never a bare traceback
            click.echo(printable(f"internal error: {exc.__class__.__name__}: "
                                 f"{first_line(str(exc), 300)}"), err=True)
            click.echo("hint: this is a bug in mobileone; please report it with the output of "
                       "the same command run with --debug", err=True)
            ctx.exit(exit_code_of(exc))
        finally:
            run.close()

    def _asked(self, width: int = 160) -> str:
        text = " ".join(["mobileone"] + [str(a) for a in getattr(self, "argv", [])])
        return text if len(text) <= width else text[: width - 3] + "..."


def _usage_error(exc: click.UsageError) -> click.exceptions.Exit:
    """A usage error as the tool's one error line and a hint (click prints three lines)."""
    click.echo(f"error: {one_line(exc.format_message())}", err=True)
    path = exc.ctx.command_path if exc.ctx is not None else "mobileone"
    click.echo(f"hint: {printable(path)} --help shows the usage", err=True)
    return click.exceptions.Exit(exc.exit_code)


def _allocation(exc: BaseException) -> str:
    """How much the failed allocation asked for, when torch said."""
    import re

    m = re.search(r"allocate (\d+) bytes", str(exc)[:2000])
    if m:
        return f"an allocation of {int(m.group(1)) / 1e9:.1f} GB failed"
    return "an allocation failed"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mobileone")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.option("--trust-file", "trust_files", multiple=True, metavar="FILE|sha256:HEX",
              callback=lambda ctx, param, value: _trusted_files(ctx, value), expose_value=False,
              help="Unpickle this file with weights_only=False, which can RUN CODE stored in "
                   "it (repeatable; also MOBILEONE_TRUST=FILE). Only before the command, so no "
                   "file name can pass it. Without it, objects that weights-only loading refuses "
                   "are read as inert placeholders.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print only errors and the one-line result (the verdict, what was written).")
@click.option("-v", "--verbose", is_flag=True,
              help="Also print the time each step took and every per-block row.")
def cli(debug: bool, quiet: bool, verbose: bool) -> None:
    """Convert MobileOne training checkpoints into deploy checkpoints, and prove them right.

    Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 internal error.
    Global options (--debug, -q, -v) go before or after the command. Output fits the
    terminal's width, or COLUMNS, or 80 columns when piped.
    """


def _trusted_files(ctx: click.Context, values) -> None:
    from .commands._options import trusted_files

    trusted_files(ctx, values)


def _verbosity(ctx: click.Context) -> int:
    from .render.console import NORMAL, QUIET, VERBOSE

    quiet, verbose = bool(ctx.params.get("quiet")), bool(ctx.params.get("verbose"))
    if quiet and verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other; give one", ctx)
    return QUIET if quiet else VERBOSE if verbose else NORMAL


def _written(written: List[str]) -> str:
    """What an interrupted run leaves behind, as it happened."""
    if not written:
        return "nothing was written"
    return "already written: " + one_line(", ".join(written), 500)


def main(argv: Optional[List[str]] = None) -> None:
    """Run the command line (``argv``, default ``sys.argv[1:]``); ends with click's
    ``SystemExit``, so a caller gets the exit code back.  The work runs where a signal can stop
    it at once (:mod:`.commands._run`); stdout and stderr never crash it
    (:mod:`.render.streams`)."""
    from .commands._run import run_interruptibly
    from .io.published import recording_writes
    from .render.streams import guard_standard_streams

    guard_standard_streams()
    written: List[str] = []  # filled by the work's thread, read by this one on a signal

    def work():
        with recording_writes(into=written):
            return cli.main(args=argv, prog_name="mobileone")

    try:
        run_interruptibly(work, lambda: _written(written))
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # reported by the command already, or nowhere to report it
                pass


def entry_point() -> None:
    """The ``mobileone`` script and ``python -m mobileone_cli``: :func:`main`, then the exit
    without the interpreter's teardown where that is safe
    (:func:`mobileone_cli.platform.exit_skipping_teardown`)."""
    from .platform import exit_skipping_teardown, may_skip_teardown

    try:
        main()
    except SystemExit as exc:
        if not may_skip_teardown(exc.code):
            raise
        exit_skipping_teardown(int(exc.code or 0))


if __name__ == "__main__":  # pragma: no cover
    entry_point()
