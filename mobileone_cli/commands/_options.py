"""Options shared by the commands, defined once (no torch at import time).

Commands are thin: they parse with these options, call one library function, and hand the
result to :func:`mobileone_cli.render.console.emit`, the single output path for JSON or tables.
"""
from __future__ import annotations

from typing import Any, List, Optional

import click

from ..arch.specs import ARCH_NAMES, ArchSpec, get_arch
from ..errors import BadInput
from ..rules.limits import DEFAULT_EPS, MAX_SEED
from ..rules.tolerances import short_number

__all__ = ["MobileOneCommand", "InputSize", "arch_option", "config_option", "bn_eps_option",
           "trust_file_option", "json_option", "input_size_option", "seed_option",
           "prefix_option", "ema_option", "reading_options", "load_options",
           "preprocessing_options", "resolve_arch", "settle_heap", "complete_from", "TRUST_KEY",
           "trusted_files", "option_like_files", "refuse_option_like_files"]


def _join_input_size(args: List[str]) -> List[str]:
    """``--input-size H W`` (two numbers) becomes ``--input-size HxW``."""
    out: List[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            out += args[i:]
            break
        if (a == "--input-size" and i + 2 < len(args) and args[i + 1].isdigit()
                and args[i + 2].isdigit()):
            out += [a, f"{args[i + 1]}x{args[i + 2]}"]
            i += 3
            continue
        out.append(a)
        i += 1
    return out


class MobileOneCommand(click.Command):
    """A command whose ``--input-size`` also takes two numbers (H W)."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        return super().parse_args(ctx, _join_input_size(list(args)))


class InputSize(click.ParamType):
    """224, 224x192, 224,192 or (after MobileOneCommand) H W -> (H, W)."""

    name = "input_size"

    def convert(self, value: Any, param, ctx) -> Any:
        from ..rules.limits import parse_input_size

        if isinstance(value, tuple):
            return value
        return parse_input_size(value)


def input_size_option(default: str = "224", help_extra: str = ""):
    return click.option("--input-size", "input_size", type=InputSize(), default=default,
                        show_default=True, metavar="H[xW]",
                        help="Input height and width: 224, 224x192 or 224 192." + help_extra)


def resolve_arch(name: Optional[str], num_classes: Optional[int] = None,
                 config: Optional[str] = None) -> Optional[ArchSpec]:
    """``--arch`` value or ``--config`` file -> ArchSpec, or None for 'auto' / not given."""
    if config is not None:
        if name is not None and name.lower() != "auto":
            raise BadInput("give --arch or --config, not both",
                           hint="a config can start from a built-in: arch: {base: s0, ...}")
        from ..io.configfile import load_config

        spec = load_config(config)
        return spec if num_classes is None else spec.with_classes(num_classes)
    if name is None or name.lower() == "auto":
        return None
    try:
        return get_arch(name, num_classes)
    except KeyError as exc:
        raise BadInput(str(exc.args[0])) from None


def complete_from(*names: str):
    """Shell completion of an option's value from a fixed list (``--arch s<TAB>``)."""
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str):
        return [n for n in names if n.startswith(incomplete)]
    return complete


def arch_option(default: Optional[str] = None, help_text: Optional[str] = None):
    return click.option("--arch", "arch_name", default=default, metavar="s0..s4|auto",
                        shell_complete=complete_from(*ARCH_NAMES, "auto"),
                        help=help_text or "MobileOne variant (s2 or timm's mobileone_s2); "
                                          "'auto' (default) detects it from tensor shapes.")


def seed_option(help_text: Optional[str] = None, default: Optional[int] = 0):
    """``--seed``: every command's seed is an integer torch's generators take (``default``
    None: the command tells an unset seed apart, its help names the default)."""
    return click.option("--seed", type=click.IntRange(0, MAX_SEED), default=default,
                        show_default=default is not None, help=help_text)


def prefix_option(help_text: str = "Key prefix of the MobileOne inside the checkpoint (e.g. "
                                     "'backbone.'); default: found automatically when there is "
                                     "one."):
    return click.option("--prefix", default=None, metavar="PFX", help=help_text)


def ema_option(help_text: str = "Use the checkpoint's EMA weights (ema_state_dict, ...) instead "
                                "of the state_dict."):
    return click.option("--ema", is_flag=True, help=help_text)


def config_option():
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        metavar="FILE",
                        help="YAML model config (mmpretrain-style model dict, or a built-in with "
                             "overrides; see examples/). Replaces --arch; its BatchNorm eps "
                             "(norm_cfg.eps) is used.")


def _valid_bn_eps(ctx: click.Context, param: click.Parameter, value: Optional[float]):
    from ..rules.limits import check_bn_eps

    return None if value is None else check_bn_eps(value)


def bn_eps_option():
    return click.option("--bn-eps", type=float, default=None, callback=_valid_bn_eps,
                        metavar="EPS",
                        help="BatchNorm eps of the training run (not stored in checkpoints). "
                             f"Default: the config's, else {short_number(DEFAULT_EPS)} (every "
                             "released model).")


TRUST_KEY = "mobileone.trust"  # where the tool's --trust-file (before the command) keeps its list


def _trust_from_before(ctx: click.Context, param: click.Parameter, value: bool):
    """The files the user trusts, named before the command or in MOBILEONE_TRUST.  The flag
    after the command is refused: a file named '--trust-file' among the files a shell pattern
    expands to would pass it."""
    if value:
        raise BadInput("--trust-file after the command is refused: a file name among the "
                       "arguments (from a *) could pass it; name the trusted file before the "
                       "command",
                       hint=f"mobileone --trust-file FILE {ctx.info_name} ... (or "
                            "MOBILEONE_TRUST=FILE); FILE may also be sha256:HEX")
    return ctx.find_root().meta.get(TRUST_KEY) or False


def trust_file_option():
    """The trust of a command: the TrustList named before it (hidden: the flag itself only
    says where trust comes from now)."""
    return click.option("--trust-file", "trust_file", is_flag=True, hidden=True,
                        callback=_trust_from_before, expose_value=True)


def trusted_files(ctx: click.Context, values) -> None:
    """The files the user trusts (--trust-file before the command, MOBILEONE_TRUST), kept for the
    command and announced on stderr before anything is read."""
    from ..errors import MobileOneError, printable
    from ..io.trust import trust_from_environment, trust_list

    try:
        trust = trust_list(values) | trust_from_environment()
    except MobileOneError as exc:
        raise click.UsageError(exc.message, ctx=ctx) from None
    ctx.meta[TRUST_KEY] = trust
    for name in trust.names:
        click.echo(f"warning: trusted file: {printable(name)} is unpickled with "
                   f"weights_only=False; code stored in it can run", err=True)


def option_like_files(args: List[str]) -> List[str]:
    """The arguments after the command that look like options and are also names of files here:
    a shell pattern (``convert * out/``) turns such a file name into an option."""
    import os

    i, found = 0, []
    while i < len(args) and args[i].startswith("-"):  # the tool's own options
        i += 2 if args[i] == "--trust-file" else 1
    for a in args[i + 1:]:
        if a == "--":
            break
        if a.startswith("-") and a != "-" and os.path.lexists(a):
            found.append(a)
    return found


def refuse_option_like_files(names: List[str]) -> None:
    """Refuse, before any work, a run whose options may have come from file names."""
    if names:
        shown = ", ".join(repr(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")
        raise BadInput(f"{shown}: read as option(s), but also the name(s) of file(s) here; a "
                       f"shell pattern such as * may have turned file names into options, so "
                       f"nothing was done",
                       hint="pass files as ./* (or after --); to give the option, rename "
                            "the file")


def preprocessing_options(crop: str = "--crop"):
    """--resize, --interpolation, --mean, --std: how image files become tensors (eval's
    pipeline; the crop comes from ``crop``)."""
    stack = [
        click.option("--resize", type=click.IntRange(min=1), default=None, metavar="N",
                     help=f"Resize the short edge to N [{crop} x 256/224]."),
        click.option("--interpolation", default=None,
                     type=click.Choice(["nearest", "bilinear", "bicubic", "box", "hamming",
                                        "lanczos"], case_sensitive=False),
                     help="Pillow resize filter [bilinear]."),
        click.option("--mean", default=None, metavar="R,G,B",
                     help="Mean on 0..255 [123.675,116.28,103.53]; values <= 1 are fractions "
                          "of 255."),
        click.option("--std", default=None, metavar="R,G,B",
                     help="Std on 0..255 [58.395,57.12,57.375]; values <= 1 are fractions of "
                          "255.")]

    def apply(command):
        for option in reversed(stack):
            command = option(command)
        return command

    return apply


def json_option(what: str = "the report"):
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def reading_options(ema_help: Optional[str] = None):
    """--arch, --config, --bn-eps, --prefix, --ema and --trust-file: how a checkpoint is read,
    the parameters :func:`load_options` takes, in the order --help lists them."""
    stack = [arch_option(), config_option(), bn_eps_option(), prefix_option(),
             ema_option(ema_help) if ema_help else ema_option(), trust_file_option()]

    def apply(command):
        for option in reversed(stack):
            command = option(command)
        return command

    return apply


def load_options(arch_name: Optional[str] = None, config_path: Optional[str] = None,
                 bn_eps: Optional[float] = None, prefix: Optional[str] = None,
                 ema: bool = False, trust_file: Any = False, cls=None, **more: Any):
    """The library's LoadOptions (or a subclass ``cls``) from the shared command-line options."""
    from ..io.source import LoadOptions

    return (cls or LoadOptions)(arch=resolve_arch(arch_name, config=config_path),
                                arch_source=f"--config {config_path}" if config_path else None,
                                eps=bn_eps, prefix=prefix, ema=ema, trust=trust_file, **more)


def settle_heap() -> None:
    """Hide the objects that importing torch made (they live until exit) from the cyclic GC.

    Without this, each full collection during a conversion re-scans them all: ~0.1 s of an s4
    conversion.  Call it after the command's heavy imports, before the work."""
    import gc

    gc.freeze()
