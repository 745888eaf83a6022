"""Options and helpers shared by the commands (no torch at import time)."""
from __future__ import annotations

from typing import Optional

import click

from ..arch import ArchSpec, get_arch
from ..errors import BadInput


def resolve_arch(name: Optional[str], num_classes: Optional[int] = None,
                 config: Optional[str] = None) -> Optional[ArchSpec]:
    """``--arch`` value or ``--config`` file -> ArchSpec, or None for 'auto' / not given
    (detect from the file)."""
    if config is not None:
        if name is not None and name.lower() != "auto":
            raise BadInput("give --arch or --config, not both",
                           hint="a config can start from a built-in: arch: {base: s0, ...}")
        from ..config import load_config

        spec = load_config(config)
        return spec if num_classes is None else spec.with_classes(num_classes)
    if name is None or name.lower() == "auto":
        return None
    try:
        return get_arch(name, num_classes)
    except KeyError as exc:
        raise BadInput(str(exc.args[0])) from None


def arch_option(required: bool = False, default: Optional[str] = None):
    return click.option("--arch", "arch_name", default=default, required=required,
                        metavar="s0..s4|auto",
                        help="MobileOne variant; 'auto' (default) detects it from tensor shapes.")


def config_option():
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                        metavar="FILE",
                        help="YAML model config (mmpretrain-style model dict, or a built-in with "
                             "overrides; see examples/). Replaces --arch.")


def arch_source(config: Optional[str]) -> str:
    """How messages name the origin of the expected architecture (see config.expect_arch)."""
    return f"--config {config}" if config else "--arch"


def _valid_bn_eps(ctx: click.Context, param: click.Parameter, value: float) -> float:
    from ..sanity import check_bn_eps  # torch-free

    return check_bn_eps(value)


def trust_file_option():
    return click.option("--trust-file", is_flag=True,
                        help="Unpickle SRC with weights_only=False, which can RUN CODE stored in "
                             "the file. Only for files you trust; without it, objects that "
                             "weights-only loading refuses are read as inert placeholders.")


def warn_trusted(path: str) -> None:
    """The --trust-file opt-in is always said out loud, on stderr."""
    click.echo(f"warning: --trust-file: {path} is unpickled with weights_only=False; code stored "
               f"in the file can run", err=True)


def bn_eps_option():
    return click.option("--bn-eps", type=float, default=1e-5, show_default=True,
                        callback=_valid_bn_eps,
                        help="BatchNorm eps used by the training run (not stored in checkpoints).")


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000.0
    return f"{n:.1f} GB"


def settle_heap() -> None:
    """Hide the objects that importing torch made (they live until exit) from the cyclic GC.

    Without this, each full collection during a conversion re-scans them all: ~0.1 s of an s4
    conversion.  Call it after the command's heavy imports, before the work."""
    import gc

    gc.freeze()
