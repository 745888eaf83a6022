"""``mobileone inspect CKPT``: what a checkpoint holds.  Torch-free for .safetensors files."""
from __future__ import annotations

from typing import Optional

import click

from ._options import config_option, json_option, resolve_arch, trust_file_option


@click.command(help="Show what a checkpoint holds: file format, wrapper, layout (apple, "
                    "mmpretrain, timm), form (train/deploy), variant, classes, prefix, dtype, "
                    "key and parameter counts, unknown keys.")
@click.argument("ckpt", type=click.Path(dir_okay=True))
@json_option()
@click.option("--prefix", default=None, metavar="PFX",
              help="Look at the MobileOne under this key prefix (when there are several).")
@click.option("--ema", is_flag=True, help="Look at the EMA weights instead of the state_dict.")
@trust_file_option()
@config_option()
def inspect(ckpt: str, as_json: bool, prefix: Optional[str], ema: bool, trust_file: bool,
            config_path: Optional[str]) -> int:
    from ..inspection import inspect_file
    from ..render.console import emit
    from ..render.inspect import render_inspect

    report = inspect_file(ckpt, ema=ema, trust=trust_file, prefix=prefix,
                          arch=resolve_arch(None, config=config_path),
                          arch_source=f"--config {config_path}" if config_path else None)
    emit(report, as_json, dict, render_inspect)
    return 0
